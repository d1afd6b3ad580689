"""Reverse-time samplers: Lie-Trotter splitting and Euler-Maruyama (DESIGN section 5).

In reverse time s = T - t the SDE is du = beta [F_A u + 2 xi (s_last + u_last) e_last] ds + sqrt(beta) G dW,
F_A = S F S. Lie-Trotter takes, per step over dB = B(t_k) - B(t_{k+1}):
  (A) the linear part exactly, u <- expm(dB F_A) u + N(0, Q_A(dB)), both from the float32-safe kernel;
  (S) an Euler step of the score part on the last block, u_last <- u_last + 2 xi dB (s_theta + u_last).
Both sub-flows cover the same interval [t_k, t_{k+1}], so the explicit Euler step of (S) evaluates the score
at the interval's start t_k, on the state (A) produced. (Evaluating it at t_{k+1} instead, where l_t is
smaller and the step stiffer, triples the mean error at 20 steps on Gaussian data.)
Euler-Maruyama takes u <- u + dB [-F u + 2 xi s e_last] + sqrt(dB) G z with the score at (u_k, t_k).

Every sampler is one `lax.scan` over steps; the kernel matrices of all steps are computed before it.
Sample k draws its noise from fold_in(rng, sample_id_k) only, so it is the same whatever the batch size
or device count (for a score function that treats examples independently).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from hold_jax import sde as sde_lib

METHODS = ("lie_trotter", "euler_maruyama")
GRIDS = ("uniform", "quadratic", "edm")


def time_grid(sde: sde_lib.LangevinSDE, num_steps: int, kind: str = "uniform", rho: float = 7.0
              ) -> jax.Array:
  """Decreasing times t_0 = T > ... > t_N = eps, shape (num_steps + 1,).

  'uniform' is linear in t; 'quadratic' places t_k = eps + (T - eps) (1 - k/N)^2, fine near eps where the
  score step is stiff; 'edm' interpolates t^(1/rho) linearly (Karras et al. 2022).
  """
  if not isinstance(num_steps, int) or num_steps < 1:
    raise ValueError(f"sampling.num_steps = {num_steps!r} is not allowed: it must be an integer >= 1.")
  fraction = jnp.linspace(0.0, 1.0, num_steps + 1)
  if kind == "uniform":
    return sde.T + (sde.eps - sde.T) * fraction
  if kind == "quadratic":
    return sde.eps + (sde.T - sde.eps) * (1.0 - fraction) ** 2
  if kind == "edm":
    if rho <= 0:
      raise ValueError(f"sampling.rho = {rho!r} is not allowed: it must be > 0.")
    start, end = sde.T ** (1.0 / rho), sde.eps ** (1.0 / rho)
    return (start + fraction * (end - start)) ** rho
  raise ValueError(f"sampling.grid = {kind!r} is not allowed: it must be one of {GRIDS}.")


def _per_sample_normal(keys: jax.Array, step: int | jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
  """Noise of one step: (num_samples, *shape), sample k from fold_in(keys[k], step)."""
  return jax.vmap(lambda key: jax.random.normal(jax.random.fold_in(key, step), shape, dtype))(keys)


def sample(sde: sde_lib.LangevinSDE, score_fn: Callable, params: Any, rng: jax.Array, sample_ids: jax.Array,
           data_shape: tuple[int, ...], num_steps: int = 100, method: str = "lie_trotter",
           grid: str = "uniform", rho: float = 7.0, denoise: bool = True, dtype=None) -> jax.Array:
  """Draws x_0 for each id in sample_ids (shape (num_samples,)); returns (num_samples, *data_shape).

  score_fn(params, u (b, n, *data_shape), t (b,)) -> last-block score (b, *data_shape).
  denoise adds a final noise-free Euler step from eps to t = 0.
  Jit it with sde, score_fn, data_shape, num_steps, method, grid, rho, denoise and dtype static
  (`make_sampler` does).
  """
  if method not in METHODS:
    raise ValueError(f"sampling.method = {method!r} is not allowed: it must be one of {METHODS}.")
  dtype = dtype or jnp.result_type(float)
  n = sde.order
  num_samples = sample_ids.shape[0]
  keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(sample_ids)
  state_shape = (n,) + tuple(data_shape)
  u = _per_sample_normal(keys, num_steps + 1, state_shape, dtype)  # the prior N(0, I)

  times = time_grid(sde, num_steps, grid, rho).astype(dtype)
  t_now, t_next = times[:-1], times[1:]
  dB = sde_lib.integrated_beta(sde, t_now) - sde_lib.integrated_beta(sde, t_next)
  steps = jnp.arange(num_steps)
  two_xi = 2.0 * sde.friction

  def batch_times(t):
    return jnp.full((num_samples,), t, dtype)

  if method == "lie_trotter":
    propagators, _, noise_factors = sde_lib.propagator_and_noise(
        sde_lib.reverse_linear_matrix(sde, dtype), two_xi, dB, sde.num_doublings, sde.decay_rate)

    def step(u, inputs):
      propagator, noise_factor, t, db, k = inputs  # t = t_k, the start of the step
      noise = _per_sample_normal(keys, k, state_shape, dtype)
      u = sde_lib.apply_blocks(propagator, u) + sde_lib.apply_blocks(noise_factor, noise)
      score = score_fn(params, u, batch_times(t))
      return u.at[:, -1].add(two_xi * db * (score + u[:, -1])), None

    u, _ = jax.lax.scan(step, u, (propagators, noise_factors, t_now, dB, steps))
  else:

    def step(u, inputs):
      t, db, k = inputs
      noise = _per_sample_normal(keys, k, state_shape[1:], dtype)
      u = u + db * sde_lib.reverse_drift_per_beta(sde, u, score_fn(params, u, batch_times(t)))
      return u.at[:, -1].add(jnp.sqrt(two_xi * db) * noise), None

    u, _ = jax.lax.scan(step, u, (t_now, dB, steps))

  if denoise:
    last_db = sde_lib.integrated_beta(sde, jnp.asarray(sde.eps, dtype))
    u = u + last_db * sde_lib.reverse_drift_per_beta(sde, u, score_fn(params, u, batch_times(sde.eps)))
  return u[:, 0]


def make_sampler(sde: sde_lib.LangevinSDE, score_fn: Callable, data_shape: tuple[int, ...], sampling_config,
                 dtype=None) -> Callable:
  """jit(sample)(params, rng, sample_ids) with the settings of `config.sampling`."""
  settings = dict(num_steps=sampling_config.num_steps, method=sampling_config.method,
                  grid=sampling_config.grid, rho=sampling_config.rho, denoise=sampling_config.denoise)
  time_grid(sde, settings["num_steps"], settings["grid"], settings["rho"])  # validates before tracing
  if settings["method"] not in METHODS:
    raise ValueError(f"sampling.method = {settings['method']!r} is not allowed: it must be one of {METHODS}.")

  @jax.jit
  def sampler(params, rng, sample_ids):
    return sample(sde, score_fn, params, rng, sample_ids, tuple(data_shape), dtype=dtype, **settings)

  return sampler
