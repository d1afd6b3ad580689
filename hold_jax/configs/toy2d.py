"""HOLD (order 3) on the multimodal swiss roll with a score MLP, sized for 2 CPU cores.

  python -m hold_jax.main --config configs/toy2d.py --workdir runs/toy2d              # train (resumes)
  python -m hold_jax.main --config configs/toy2d.py --workdir runs/toy2d --mode=sample
  python -m hold_jax.main --config configs/toy2d.py --workdir runs/toy2d --mode=eval   # NLL bound and SW1
  python -m hold_jax.main --config configs/toy2d.py:local --workdir /tmp/toy          # smoke run
"""
import ml_collections

from hold_jax.configs import default


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = default.get_config()

  config.data = ml_collections.ConfigDict()
  config.data.dataset = "multimodal_swiss_roll"  # or 'gaussian_mixture', 'checkerboard', 'npy:PATH'

  config.model = ml_collections.ConfigDict()
  config.model.name = "mlp"
  config.model.width = 128
  config.model.depth = 3
  config.model.embedding = "fourier"
  config.model.embedding_dim = 64
  config.model.fourier_scale = 1.0

  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 1000
  config.ema.decay = 0.999
  config.training.num_steps = 40000
  config.training.batch_size = 512
  config.training.log_every = 500
  config.training.checkpoint_every = 5000

  # The network is the default denoiser of the sufficient statistic (docs/denoiser.md); the data's standard
  # deviation is 0.72. The arms (noise 0.002) need noise levels far below EDM's log-normal (-1.2, 1.2), which
  # leaves half of the samples off the arms; (-3, 2) puts 0.90 within 0.01 at 20 NFE (benchmarks/RESULTS.md).
  config.loss.sigma_data = 0.7
  config.loss.log_sigma_mean = -3.0
  config.loss.log_sigma_std = 2.0

  config.sampling.method = "lie_trotter"
  config.sampling.num_steps = 50
  config.sampling.grid = "quadratic"
  config.sampling.num_samples = 10000
  config.sampling.batch_size = 10000

  # --mode=eval: the NLL bound and the sliced Wasserstein-1 distance of 10,000 samples to as many held-out points
  # (benchmarks/toy2d_quality.py's count), beside the floor of two held-out draws and a noise baseline.
  config.eval.metrics = ("nll", "sw1")
  config.eval.num_samples = 10000

  if variant == "local":  # a CPU smoke run of a few seconds
    config.model.width = 32
    config.model.depth = 1
    config.training.num_steps = 40
    config.training.batch_size = 64
    config.training.log_every = 10
    config.training.checkpoint_every = 20
    config.optim.warmup_steps = 10
    config.sampling.num_samples = 256
    config.sampling.batch_size = 256
    config.eval.num_samples = 256
  elif variant:
    raise ValueError(f"configs/toy2d.py knows the variant 'local' only, got {variant!r}.")
  return config
