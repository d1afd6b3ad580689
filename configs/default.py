"""Shared defaults; every experiment config starts from `get_config()` here and overrides what it needs."""
import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  # The forward process (hold_jax/sde.py, DESIGN section 2). Empty couplings and unset friction mean
  # critical damping with w_1 = coupling_scale: for order 3, w = (1, 2 sqrt 2), xi = 3 sqrt 3.
  config.sde = sde = ml_collections.ConfigDict()
  sde.order = 3
  sde.coupling_scale = 1.0
  sde.couplings = config_dict.placeholder(tuple)
  sde.friction = config_dict.placeholder(float)
  sde.beta_schedule = "constant"  # 'constant' (beta_0) or 'linear' (beta_0 at t = 0 to beta_1 at T)
  sde.beta_0 = 6.5
  sde.beta_1 = 6.5
  sde.T = 1.0
  # Smallest training time and end of sampling. The float32 factor L_t is accurate to 1e-5 down to
  # t = 1e-3 for orders 1-4 (order <= 3: down to 1e-5); see README "Numerics" and tests/test_losses.py.
  sde.eps = 1e-3
  sde.init_aux_var = 0.04  # initial variance of every auxiliary block (4% of stationary, as CLD)

  # The objective (hold_jax/losses.py, DESIGN section 4).
  config.loss = loss = ml_collections.ConfigDict()
  loss.objective = "bcsm"  # 'bcsm' (condition on x_0) or 'dsm' (condition on the full initial state)
  loss.weighting = "eps"  # 'eps' (lambda = l_t^2), 'likelihood' (xi beta) or 'none'
  loss.parametrization = "eps"  # network output: 'eps', 'score' or 'mixed' (N(0, I) score + correction)
  loss.time_sampling = "uniform"  # training times: 'uniform' on [eps, T] or 'log_uniform' (density ~ 1/t)

  # Sampling (hold_jax/sampling.py, DESIGN section 5).
  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.method = "lie_trotter"  # 'lie_trotter' or 'euler_maruyama'
  sampling.num_steps = 100
  sampling.grid = "quadratic"  # 'uniform', 'quadratic' or 'edm'
  sampling.rho = 7.0  # exponent of the 'edm' grid
  sampling.denoise = True  # final noise-free step from eps to 0
  sampling.num_samples = 1024
  sampling.batch_size = 1024
  return config
