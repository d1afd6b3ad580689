"""How a network's output reads as the last-block score: the parametrisations of `loss.parametrization`.

With u_t = mean + L_t eps and L_t lower triangular in block order, the last-block score given x_0 is
-eps_last / l_t, l_t = L_t[n-1, n-1] (hold_jax/training/losses.py). A network may predict the score itself
('score'), eps_last ('eps', score = -output / l_t), or the correction to the exact score of N(0, I) data
('mixed', CLD's mixed score). The 'denoiser' parametrisation reads the network differently, through the
sufficient statistic (hold_jax/models/denoiser.py).
"""
from __future__ import annotations

from typing import Any, Callable

import jax

from hold_jax.process import exact_scores
from hold_jax.process import kernel_table
from hold_jax.process import sde as sde_lib

# score_fn(params, u (batch, n, *data_shape), t (batch,)) -> last-block score (batch, *data_shape).
ScoreFn = Callable[[Any, jax.Array, jax.Array], jax.Array]

PARAMETRIZATIONS = ("eps", "score", "mixed", "denoiser")


def score_scale(sde: sde_lib.LangevinSDE, t: jax.Array) -> jax.Array:
  """l_t = L_t[n-1, n-1] of the BCSM kernel (x_0 known), shape t.shape: the std of eps_last / score.

  Read from the tabulated kernel (t in [eps, T]), like `losses.perturb`, so training and sampling use one l_t.
  """
  _, factor = kernel_table.bcsm_kernel(sde, t)
  return factor[..., -1, -1]


def score_from_output(sde: sde_lib.LangevinSDE, parametrization: str, output: jax.Array, u: jax.Array,
                      t: jax.Array) -> jax.Array:
  """Turns a network output (batch, *data_shape) into the last-block score.

  'score': the output is the score. 'eps': the output predicts eps_last, score = -output / l_t.
  'mixed': the exact score of N(0, I) data plus the 'eps' correction (CLD's mixed score).
  """
  if parametrization == "score":
    return output
  if parametrization == "denoiser":
    raise ValueError("loss.parametrization = 'denoiser': the network is called with the statistic, not the state; "
                     "its score function is denoiser.score_fn (trained_model.make_score_fn builds it).")
  scale = sde_lib.per_example(score_scale(sde, t), output.ndim)
  correction = -output / scale
  if parametrization == "eps":
    return correction
  if parametrization == "mixed":
    return exact_scores.gaussian_score(sde, u, t, 0.0, 1.0) + correction
  raise ValueError(f"loss.parametrization = {parametrization!r} is not allowed: it must be one of "
                   f"{PARAMETRIZATIONS}.")
