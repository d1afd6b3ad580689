"""The forward process for orders 1-4 at critical damping with w_1 = 1 (order 1: the VP SDE, xi = 1/2).

Prints, per order: the slowest decay rate of F; the integrated beta B(T) needed for KL(p_T || N(0, I)) <
1e-5 from a data point at 3 standard deviations (auxiliaries N(0, 0.04) integrated out); and the worst
float32 error of the kernel (Phi and Sigma, normalised as in tests/test_sde.py) over t in [1e-5, T] and of
the factor L_t and l_t over [eps, T], against the float64 kernel (itself tested against adaptive quadrature
and 80-digit mpmath). Writes benchmarks/results/process.json.

  python benchmarks/process.py
"""
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from hold_jax.configs import default  # noqa: E402
from hold_jax.process import perturbation_kernel  # noqa: E402
from hold_jax.process import sde as sde_lib  # noqa: E402

KL_TARGET = 1e-5
DATA_POINT = 3.0


def make_sde(order):
  config = default.get_config().sde
  config.order = order
  return sde_lib.from_config(config)


MAX_INTEGRATED_BETA = 200.0


def kl_to_prior(sde, integrated_beta):
  """KL(N(mu, Sigma) || N(0, I)) of the state at B(t) = integrated_beta, started at x_0 = DATA_POINT."""
  drift = sde_lib.drift_matrix(sde, jnp.float64)
  phi, _, noise_factor = perturbation_kernel.propagator_and_noise(
      drift, sde_lib.noise_variance(sde), jnp.asarray(integrated_beta),
      perturbation_kernel.required_doublings(np.asarray(drift), MAX_INTEGRATED_BETA), sde.decay_rate)
  phi, noise_factor = np.asarray(phi), np.asarray(noise_factor)
  init = np.diag(np.asarray(sde_lib.initial_var(sde)))
  sigma = phi @ init @ phi.T + noise_factor @ noise_factor.T
  mean = phi[:, 0] * DATA_POINT
  _, log_det = np.linalg.slogdet(sigma)
  return 0.5 * (np.trace(sigma) + mean @ mean - sde.order - log_det)


def required_integrated_beta(sde):
  low, high = 0.0, MAX_INTEGRATED_BETA
  for _ in range(60):  # KL decreases along a Markov process, so bisection finds the first crossing
    middle = 0.5 * (low + high)
    low, high = (middle, high) if kl_to_prior(sde, middle) > KL_TARGET else (low, middle)
  return high


def float32_errors(sde):
  times = np.geomspace(1e-5, sde.T, 60)
  phi64, sigma64 = perturbation_kernel.marginal(sde, jnp.asarray(times), sde_lib.initial_cov(sde))
  phi32, sigma32 = perturbation_kernel.marginal(sde, jnp.asarray(times, jnp.float32),
                                                sde_lib.initial_cov(sde, dtype=jnp.float32))
  phi64, sigma64 = np.asarray(phi64), np.asarray(sigma64)
  phi32, sigma32 = np.asarray(phi32, np.float64), np.asarray(sigma32, np.float64)
  scale = np.sqrt(np.diagonal(sigma64, axis1=1, axis2=2))
  sigma_error = np.max(np.abs(sigma32 - sigma64) / (scale[:, :, None] * scale[:, None, :]))
  phi_error = np.max(np.max(np.abs(phi32 - phi64), axis=(1, 2)) / np.max(np.abs(phi64), axis=(1, 2)))
  factor_times = times[times >= sde.eps]
  _, factor64 = perturbation_kernel.marginal_factor(sde, jnp.asarray(factor_times))
  _, factor32 = perturbation_kernel.marginal_factor(sde, jnp.asarray(factor_times, jnp.float32))
  factor64, factor32 = np.asarray(factor64), np.asarray(factor32, np.float64)
  row_norm = np.linalg.norm(factor64, axis=2, keepdims=True)
  factor_error = np.max(np.abs(factor32 - factor64) / row_norm)
  scale_error = np.max(np.abs(factor32[:, -1, -1] / factor64[:, -1, -1] - 1))
  return dict(phi=float(phi_error), sigma=float(sigma_error), factor=float(factor_error), score_scale=float(scale_error))


def main():
  rows = []
  for order in (1, 2, 3, 4):
    sde = make_sde(order)
    _, _, critical_rate = sde_lib.critical_parameters(order, 1.0)
    start = time.perf_counter()
    needed = required_integrated_beta(sde)
    errors = float32_errors(sde)
    rows.append(dict(order=order, couplings=sde.couplings, friction=sde.friction, decay_rate=critical_rate,
                     eigen_decay_rate=sde.decay_rate, integrated_beta_needed=needed,
                     float32_errors=errors, seconds=time.perf_counter() - start))
  print(f"KL(p_T || N(0, I)) < {KL_TARGET:g} from x_0 = {DATA_POINT:g} std; float32 vs float64, beta = 6.5, eps = 1e-3")
  print("| order | couplings w | friction xi | decay rate | B(T) needed | f32 Phi | f32 Sigma | f32 L_t | f32 l_t |")
  print("|---|---|---|---|---|---|---|---|---|")
  for row in rows:
    w = ", ".join(f"{c:.4g}" for c in row["couplings"]) or "-"
    e = row["float32_errors"]
    print(f"| {row['order']} | {w} | {row['friction']:.4g} | {row['decay_rate']:.4f} | "
          f"{row['integrated_beta_needed']:.2f} | {e['phi']:.1e} | {e['sigma']:.1e} | {e['factor']:.1e} | "
          f"{e['score_scale']:.1e} |")
  for a, b in zip(rows, rows[1:]):
    print(f"order {b['order']} / order {a['order']}: decay rate x{b['decay_rate'] / a['decay_rate']:.3f}, "
          f"B(T) needed x{b['integrated_beta_needed'] / a['integrated_beta_needed']:.3f}")
  output = dict(machine=platform.platform(), processor=platform.processor(), jax=jax.__version__,
                devices=[str(d) for d in jax.devices()], rows=rows)
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "process.json")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(output, f, indent=2)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
