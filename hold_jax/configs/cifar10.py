"""HOLD (order 3) on CIFAR-10 with NCSN++ (128 channels, multipliers 1,2,2,2, 8 blocks per resolution,
attention at 16x16, dropout 0.1), Adam 2e-4 with warm-up, clipping 1, EMA 0.9999, batch 128.

  python -m hold_jax.main --config configs/cifar10.py --workdir W --config.data.data_dir=/path/to/tfds
  python -m hold_jax.main --config configs/cifar10.py:local --workdir /tmp/c   # CPU smoke run
"""
import ml_collections

from hold_jax.configs import images


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = images.get_config()
  config.data.dataset = "cifar10"
  config.data.image_size = 32
  config.data.num_channels = 3
  if variant == "local":
    images.shrink_for_cpu(config)
  elif variant:
    raise ValueError(f"configs/cifar10.py knows the variant 'local' only, got {variant!r}.")
  return config
