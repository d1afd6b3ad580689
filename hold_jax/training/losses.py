"""Score-matching objectives: BCSM and DSM with their weightings (docs/process.md).

Only the last block receives noise, so only its score is learned. With u_t = mean + L_t eps and L_t lower
triangular in block order, the last-block score of u_t given what is conditioned on is exactly
-eps_last / l_t with l_t = L_t[n-1, n-1]; its conditional expectation given u_t is the marginal score.

  BCSM: condition on x_0, integrate the auxiliaries out (S_0 = diag(0, sigma^2, ...)).
  DSM:  condition on the full initial state (x_0 and sampled auxiliaries); L_t is the factor of Q alone.

BCSM reads the kernel from a float64 table on a log-t grid (kernel_table.py); DSM, kept for comparison,
computes it directly.

The loss is lambda(t) || s_theta(u_t, t) + eps_last / l_t ||^2 averaged over data coordinates, with
lambda = l_t^2 ('eps': the loss is then || eps_theta - eps_last ||^2 when s = -eps_theta / l_t),
xi beta(t) ('likelihood', g^2 / 2) or 1 ('none'). The score function is any callable; the network
parametrisations that produce one are in hold_jax/models/score_outputs.py.

The 'denoiser' parametrisation (hold_jax/models/denoiser.py, the default) is the same objective written for the
posterior mean: with s = -(y_last - w_last D) / l_t, l_t s + eps_last = w_last (D - x_0), so BCSM is a
weighted || D - x_0 ||^2, and it is trained with EDM's weight lambda(sigma_eff) = 1 / c_out^2 ('edm') on noise levels
drawn by `sample_noise_levels`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from hold_jax import field_checks
from hold_jax.models import denoiser
from hold_jax.models import score_outputs
from hold_jax.process import kernel_table
from hold_jax.process import perturbation_kernel
from hold_jax.process import sde as sde_lib
from hold_jax.process import sufficient_statistic

OBJECTIVES = ("bcsm", "dsm")
TIME_SAMPLINGS = ("uniform", "log_uniform", "log_normal")
WEIGHTINGS = ("eps", "likelihood", "none", "edm")
# EDM's log-normal noise levels (Karras et al. 2022, P_mean and P_std): the defaults of loss.log_sigma_*.
EDM_LOG_SIGMA_MEAN, EDM_LOG_SIGMA_STD = -1.2, 1.2


def perturb(sde: sde_lib.LangevinSDE, objective: str, x0: jax.Array, t: jax.Array, rng: jax.Array
            ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Draws u_t from the kernel of `objective`.

  Args:
    x0: (batch, *data_shape) data; t: (batch,) times.

  Returns:
    u_t (batch, n, *data_shape), eps_last (batch, *data_shape) and l_t (batch,), such that the
    conditional last-block score is -eps_last / l_t.
  """
  eps_rng, aux_rng = jax.random.split(rng)
  batch = x0.shape[0]
  n = sde.order
  noise = jax.random.normal(eps_rng, (batch, n) + x0.shape[1:], x0.dtype)
  if objective == "bcsm":  # the hot path: the kernel read from its table (hold_jax/process/kernel_table.py)
    mean_coefficients, factor = kernel_table.bcsm_kernel(sde, t)
    mean = mean_coefficients.reshape((batch, n) + (1,) * (x0.ndim - 1)) * x0[:, None]
  elif objective == "dsm":
    phi, factor = perturbation_kernel.marginal_factor(sde, t, jnp.zeros((n,), x0.dtype))
    aux_std = jnp.sqrt(jnp.asarray(sde.init_aux_var, x0.dtype)).reshape((n - 1,) + (1,) * (x0.ndim - 1))
    aux = aux_std * jax.random.normal(aux_rng, (batch, n - 1) + x0.shape[1:], x0.dtype)
    mean = sde_lib.apply_blocks(phi, jnp.concatenate([x0[:, None], aux], axis=1))
  else:
    raise ValueError(f"loss.objective = {objective!r} is not allowed: it must be one of {OBJECTIVES}.")
  u = mean + sde_lib.apply_blocks(factor, noise)
  return u, noise[:, -1], factor[:, -1, -1]


def weighting_over_scale_squared(sde: sde_lib.LangevinSDE, weighting: str, t: jax.Array,
                                 scale: jax.Array) -> jax.Array:
  """lambda(t) / l_t^2, the factor in front of || l_t s + eps_last ||^2; shape t.shape."""
  if weighting == "eps":
    return jnp.ones_like(scale)
  if weighting == "likelihood":
    return sde.friction * sde_lib.beta(sde, t) / scale**2
  if weighting == "none":
    return 1.0 / scale**2
  raise ValueError(f"loss.weighting = {weighting!r} is not allowed: it must be one of {WEIGHTINGS}.")


def sample_times(sde: sde_lib.LangevinSDE, kind: str, rng: jax.Array, shape: tuple[int, ...], dtype,
                 log_sigma_mean: float = EDM_LOG_SIGMA_MEAN, log_sigma_std: float = EDM_LOG_SIGMA_STD) -> jax.Array:
  """Training times: 'uniform' on [eps, T], 'log_uniform' (density proportional to 1/t on [eps, T]), or
  'log_normal': log sigma_eff(t) ~ N(log_sigma_mean, log_sigma_std^2) truncated to the process's range.

  log_uniform spends as many examples on [1e-3, 1e-2] as on [0.1, 1]: the fine structure of the data is
  only visible to the score at small t. It is the same objective with the weighting multiplied by
  (T - eps) / (t log(T / eps)). log_normal chooses the time by what the state knows of x_0 (EDM's noise levels,
  mapped to t through the kernel table): log-uniform t puts 31% of HOLD's examples at sigma_eff < 1e-3.
  """
  if kind == "uniform":
    return jax.random.uniform(rng, shape, dtype, sde.eps, sde.T)
  if kind == "log_uniform":
    return sde.eps * (sde.T / sde.eps) ** jax.random.uniform(rng, shape, dtype)
  if kind == "log_normal":
    low, high = (np.log(s) for s in sufficient_statistic.sigma_range(sde))
    sigma = jnp.exp(_truncated_normal(rng, shape, dtype, log_sigma_mean, log_sigma_std, low, high))
    return sufficient_statistic.time_at_sigma(sde, sigma)
  raise ValueError(f"loss.time_sampling = {kind!r} is not allowed: it must be one of {TIME_SAMPLINGS}.")


def _truncated_normal(rng, shape, dtype, mean, std, low, high) -> jax.Array:
  """N(mean, std^2) conditioned on [low, high], by inverting the normal CDF (no mass piles up at the ends)."""
  lower, upper = (jax.scipy.special.ndtr((bound - mean) / std) for bound in (low, high))
  uniform = jax.random.uniform(rng, shape, jnp.float32, lower, upper)
  return (mean + std * jax.scipy.special.ndtri(jnp.clip(uniform, 1e-12, 1 - 1e-7))).astype(dtype)


def sample_noise_levels(sde: sde_lib.LangevinSDE, kind: str, rng: jax.Array, shape: tuple[int, ...], dtype,
                        log_sigma_mean: float = EDM_LOG_SIGMA_MEAN, log_sigma_std: float = EDM_LOG_SIGMA_STD
                        ) -> jax.Array:
  """The denoiser's training noise levels sigma_eff: 'log_normal' is EDM's log sigma ~ N(mean, std^2), not
  truncated (a denoiser needs no time, so it also learns the levels another process visits); 'uniform' and
  'log_uniform' are sigma_eff(t) of those training times."""
  if kind == "log_normal":
    return jnp.exp(log_sigma_mean + log_sigma_std * jax.random.normal(rng, shape, dtype))
  return sufficient_statistic.coefficients(sde, sample_times(sde, kind, rng, shape, dtype)).sigma


def per_example_loss(sde: sde_lib.LangevinSDE, score_fn: score_outputs.ScoreFn, params: Any, x0: jax.Array,
                     rng: jax.Array, objective: str = "bcsm", weighting: str = "eps",
                     time_sampling: str = "uniform", log_sigma_mean: float = EDM_LOG_SIGMA_MEAN,
                     log_sigma_std: float = EDM_LOG_SIGMA_STD) -> jax.Array:
  """lambda(t) || s_theta(u_t, t) + eps_last / l_t ||^2 averaged over data coordinates; returns (batch,).

  t is drawn per example by `sample_times(time_sampling)`.
  """
  t_rng, noise_rng = jax.random.split(rng)
  t = sample_times(sde, time_sampling, t_rng, x0.shape[:1], x0.dtype, log_sigma_mean, log_sigma_std)
  u, eps_last, scale = perturb(sde, objective, x0, t, noise_rng)
  score = score_fn(params, u, t)
  residual = sde_lib.per_example(scale, score.ndim) * score + eps_last  # l_t (s + eps_last / l_t)
  squared = jnp.mean(residual.reshape(residual.shape[0], -1) ** 2, axis=-1)
  return weighting_over_scale_squared(sde, weighting, t, scale) * squared


@dataclasses.dataclass(frozen=True)
class Settings:
  """The objective of config.loss, each field checked when made (`settings_from_config` at the edge, or
  Settings(...) in a notebook), so the loss functions below never see a bad combination."""

  objective: str = "bcsm"
  parametrization: str = "denoiser"
  weighting: str = "edm"
  time_sampling: str = "uniform"
  log_sigma_mean: float = EDM_LOG_SIGMA_MEAN
  log_sigma_std: float = EDM_LOG_SIGMA_STD
  sigma_data: float = 0.5

  def __post_init__(self):
    for field, allowed in (("objective", OBJECTIVES), ("weighting", WEIGHTINGS),
                           ("parametrization", score_outputs.PARAMETRIZATIONS), ("time_sampling", TIME_SAMPLINGS)):
      field_checks.require(getattr(self, field) in allowed, f"loss.{field}", getattr(self, field), f"one of {allowed}")
    is_denoiser = self.parametrization == "denoiser"
    field_checks.require((self.weighting == "edm") == is_denoiser, "loss.weighting", self.weighting,
                         "'edm' with loss.parametrization = 'denoiser' (EDM's weight of a denoiser) and one of "
                         f"{WEIGHTINGS[:3]} with the score parametrisations")
    if is_denoiser:
      field_checks.require(self.objective == "bcsm", "loss.objective", self.objective,
                           "'bcsm' with loss.parametrization = 'denoiser' (the statistic conditions on x_0 alone)")
    for field in ("sigma_data", "log_sigma_std"):
      field_checks.require_positive(f"loss.{field}", getattr(self, field))
    field_checks.require(field_checks.is_number(self.log_sigma_mean), "loss.log_sigma_mean", self.log_sigma_mean,
                         "a finite number (the mean of log sigma_eff)")


def settings_from_config(loss_config) -> Settings:
  """config.loss checked once into Settings. Fields a record predates keep what they meant then: time_sampling
  'uniform', EDM's noise levels (-1.2, 1.2); sigma_data is read by the denoiser alone."""
  fields = {field: loss_config[field] for field in ("objective", "parametrization", "weighting")}
  optional = {field.name: loss_config[field.name] for field in dataclasses.fields(Settings)
              if field.name not in fields and field.name in loss_config}
  return Settings(**fields, **optional)


def make_loss_fn(sde: sde_lib.LangevinSDE, score_fn: score_outputs.ScoreFn, settings) -> Callable:
  """loss_fn(params, x0 (batch, *data_shape), rng) -> scalar mean loss of a score function; `settings` a
  Settings or config.loss."""
  if not isinstance(settings, Settings):
    settings = settings_from_config(settings)
  field_checks.require(settings.parametrization != "denoiser", "loss.parametrization", "denoiser",
                       f"one of {score_outputs.PARAMETRIZATIONS[:3]} for a score function (a denoiser's loss is "
                       "make_denoiser_loss_fn's)")

  def loss_fn(params, x0, rng):
    return jnp.mean(per_example_loss(sde, score_fn, params, x0, rng, settings.objective, settings.weighting,
                                     settings.time_sampling, settings.log_sigma_mean, settings.log_sigma_std))

  return loss_fn


def make_denoiser_loss_fn(sde: sde_lib.LangevinSDE, network: denoiser.Network, settings) -> Callable:
  """loss_fn(params, x0, rng) -> scalar mean of EDM's denoiser loss (hold_jax/models/denoiser.py); `settings` a
  Settings or config.loss."""
  if not isinstance(settings, Settings):
    settings = settings_from_config(settings)

  def loss_fn(params, x0, rng):
    sigma_rng, noise_rng = jax.random.split(rng)
    sigma = sample_noise_levels(sde, settings.time_sampling, sigma_rng, x0.shape[:1], x0.dtype,
                                settings.log_sigma_mean, settings.log_sigma_std)
    return jnp.mean(denoiser.per_example_loss(network, params, x0, sigma, noise_rng, float(settings.sigma_data)))

  return loss_fn
