"""Shared recipe for image experiments (NCSN++ / DDPM++ on tfds or digits data); cifar10.py, celebahq256.py
and digits.py start from `get_config()` here and override what they need."""
import ml_collections
from ml_collections import config_dict

from hold_jax.configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()

  config.data = data = ml_collections.ConfigDict()
  data.dataset = "cifar10"  # 'cifar10' or 'celebahq256' (tfds), or 'digits' (ships with scikit-learn)
  # Prepared tfds data (the folder passed to `tfds build --data_dir`); unset: tfds' default
  # ~/tensorflow_datasets. Nothing is ever downloaded at training time.
  data.data_dir = config_dict.placeholder(str)
  data.split = "train"
  data.image_size = 32  # images are resized (or padded, see the pipeline) to image_size x image_size
  data.num_channels = 3
  data.random_flip = True  # random horizontal flip
  data.dequantize = False  # uniform dequantisation: (pixel + U[0, 1)) / 256 instead of pixel / 255

  # NCSN++ after Song et al. 2021 (score SDE), sized for CIFAR-10.
  config.model = model = ml_collections.ConfigDict()
  model.name = "ncsnpp"  # 'ncsnpp' or 'ddpmpp'
  model.nf = 128  # base channels
  model.ch_mult = (1, 2, 2, 2)  # channel multiplier per resolution
  model.num_res_blocks = 8  # residual blocks per resolution
  model.attn_resolutions = (16,)  # resolutions with self-attention
  model.dropout = 0.1
  model.resblock_type = "biggan"  # 'biggan' (resampling inside the block) or 'ddpm'
  model.embedding = "fourier"  # time embedding: 'fourier' (of log t) or 'sinusoidal'
  model.fourier_scale = 16.0
  model.skip_rescale = True  # divide residual sums by sqrt 2
  model.resample_with_conv = True
  model.fir = True  # FIR-filtered up/downsampling (kernel 1,3,3,1), as NCSN++
  model.progressive_input = "residual"  # NCSN++ input pyramid: 'none' or 'residual'
  model.init_scale = 0.0  # scale of the last conv of each block (0: blocks start as identities)

  # Adam 2e-4 with 5,000 warm-up steps, EMA 0.9999, batch 128: configs/default.py's training defaults.
  config.training.sample_every = 50_000  # a sample grid in TensorBoard and workdir/samples every this many steps
  config.training.num_grid_samples = 64  # images in that grid

  # --mode=eval: FID, KID and IS of 50,000 samples against the training split (eval.inception_weights must
  # name the local FID Inception file); add 'nll' for the likelihood bound on eval.split.
  config.eval.metrics = ("fid", "kid", "is")

  config.sampling.method = "lie_trotter"
  config.sampling.num_steps = 500
  config.sampling.grid = "quadratic"
  config.sampling.num_samples = 50_000
  config.sampling.batch_size = 500
  return config


def shrink_for_cpu(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The `:local` variant: the same pipeline and network type, small enough for a CPU smoke run."""
  config.model.nf = 16
  config.model.ch_mult = (1, 2)
  config.model.num_res_blocks = 1
  config.model.attn_resolutions = (config.data.image_size // 2,)
  config.training.num_steps = 20
  config.training.batch_size = 8
  config.training.log_every = 5
  config.training.checkpoint_every = 10
  config.training.sample_every = 20
  config.training.num_grid_samples = 4
  config.optim.warmup_steps = 5
  config.ema.decay = 0.999
  config.sampling.num_steps = 10
  config.sampling.num_samples = 8
  config.sampling.batch_size = 8
  config.eval.num_samples = 16
  config.eval.round_size = 8
  config.eval.kid_subset_size = 8
  config.eval.is_splits = 2
  return config
