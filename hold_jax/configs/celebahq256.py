"""HOLD (order 3) on CelebA-HQ 256x256 with NCSN++ (score SDE's CelebA-HQ shape: multipliers
1,1,2,2,2,2,2, 2 blocks per resolution, attention at 16x16), batch 64.

  python -m hold_jax.main --config configs/celebahq256.py --workdir W --config.data.data_dir=/path/to/tfds
  python -m hold_jax.main --config configs/celebahq256.py:local --workdir /tmp/c   # CPU smoke run (32x32)
"""
import ml_collections

from hold_jax.configs import images


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = images.get_config()
  config.data.dataset = "celebahq256"
  config.data.image_size = 256
  config.data.num_channels = 3
  config.model.ch_mult = (1, 1, 2, 2, 2, 2, 2)
  config.model.num_res_blocks = 2
  config.model.attn_resolutions = (16,)
  config.model.dropout = 0.0
  config.training.batch_size = 64
  config.training.num_steps = 2_400_000
  config.eval.split = "train"  # tfds' celeb_a_hq has one split
  config.sampling.batch_size = 64
  config.sampling.num_samples = 10_000
  if variant == "local":
    config.data.image_size = 32  # same data, resized, so the smoke run stays a few seconds per step
    images.shrink_for_cpu(config)
  elif variant:
    raise ValueError(f"configs/celebahq256.py knows the variant 'local' only, got {variant!r}.")
  return config
