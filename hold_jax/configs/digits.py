"""HOLD (order 3) on scikit-learn's 8x8 handwritten digits (1,797 images, no download) at their native 8x8,
with a small DDPM++: recognisable digits after 25-40 minutes on 2 CPU cores (10k steps at 7-10 steps/s on an idle machine).
--config.data.image_size=16 upsamples them smoothly, at 4x the cost per step.

  python -m hold_jax.main --config configs/digits.py --workdir runs/digits
  python -m hold_jax.main --config configs/digits.py --workdir runs/digits --mode=sample
  python -m hold_jax.main --config configs/digits.py:local --workdir /tmp/d   # smoke run
"""
import ml_collections

from hold_jax.configs import images


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = images.get_config()
  config.data.dataset = "digits"
  config.data.image_size = 8
  config.data.num_channels = 1
  config.data.random_flip = False  # a mirrored digit is not a digit
  config.model.name = "ddpmpp"
  config.model.nf = 32
  config.model.ch_mult = (1, 2)
  config.model.num_res_blocks = 1
  config.model.attn_resolutions = (4,)
  config.model.dropout = 0.0
  config.model.resblock_type = "ddpm"
  config.model.fir = False
  config.model.progressive_input = "none"
  config.optim.learning_rate = 5e-4
  config.optim.warmup_steps = 200
  config.ema.decay = 0.999
  config.training.num_steps = 10_000
  config.training.batch_size = 64
  config.training.log_every = 100
  config.training.checkpoint_every = 1000
  config.training.sample_every = 2500
  config.training.num_grid_samples = 64
  config.eval.split = "train"  # the digits have one split
  # Sample quality with the bundled digits classifier (no download): its Fréchet distance, KID and IS,
  # reported as fd_digits, kid_digits and is_digits against all 1,797 digits.
  config.eval.feature_network = "digits"
  config.eval.num_samples = 2000
  config.eval.round_size = 500
  # The denoiser's best measured sampler on the digits: deterministic gddim on the quadratic grid, as good at 20
  # NFE as Lie-Trotter at 200 (docs/samplers.md, "Which sampler"). A network of the whole state ('eps',
  # 'score', 'mixed') wants config.sampling.method = 'lie_trotter' with 100-200 steps instead.
  config.sampling.method = "gddim"
  config.sampling.num_steps = 20
  config.sampling.num_samples = 64
  config.sampling.batch_size = 64
  if variant == "local":
    images.shrink_for_cpu(config)
  elif variant:
    raise ValueError(f"configs/digits.py knows the variant 'local' only, got {variant!r}.")
  return config
