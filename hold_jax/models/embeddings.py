"""Time embeddings shared by every score network."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

EMBEDDINGS = ("fourier", "sinusoidal")


def time_embedding(kind: str, t: jax.Array, dim: int, fourier_scale: float = 1.0) -> jax.Array:
  """(batch,) times -> (batch, dim) features.

  'fourier': Gaussian random Fourier features of log t, frequencies N(0, fourier_scale^2) (fixed frequencies drawn from a constant seed, so
  they are part of the architecture, not of the parameters); log t spreads [eps, T] evenly over decades,
  where the kernel changes. 'sinusoidal': the transformer embedding of 1000 t (DDPM's convention).
  """
  if dim % 2:
    raise ValueError(f"model.embedding_dim = {dim} must be even.")
  if kind == "fourier":
    frequencies = np.random.default_rng(0).standard_normal(dim // 2) * fourier_scale
    angles = 2 * np.pi * jnp.log(t)[:, None] * jnp.asarray(frequencies, t.dtype)[None]
  elif kind == "sinusoidal":
    frequencies = np.exp(-np.log(10000.0) * np.arange(dim // 2) / (dim // 2))
    angles = 1000.0 * t[:, None] * jnp.asarray(frequencies, t.dtype)[None]
  else:
    raise ValueError(f"model.embedding = {kind!r} is not allowed: it must be one of {EMBEDDINGS}.")
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
