"""Score MLP for low-dimensional data (docs/process.md): input all n blocks, output the last block."""
from __future__ import annotations

import flax.linen as nn
import jax

from hold_jax import field_checks
from hold_jax.models import embeddings


class ResidualBlock(nn.Module):
  """h + Dense(silu(Dense(silu(LayerNorm(h))) + Dense(time embedding)))."""

  width: int

  @nn.compact
  def __call__(self, h: jax.Array, embedding: jax.Array) -> jax.Array:
    y = nn.Dense(self.width)(nn.silu(nn.LayerNorm()(h)))
    y = y + nn.Dense(self.width)(embedding)
    y = nn.Dense(self.width, kernel_init=nn.initializers.zeros)(nn.silu(y))
    return h + y


class ScoreMLP(nn.Module):
  """(u (batch, n, D), t (batch,)) -> (batch, D), the network output for the last block.

  Attributes:
    data_dim: D.
    width, depth: hidden width and number of residual blocks.
    embedding: 'fourier' (random features of log t) or 'sinusoidal' (transformer-style of t).
    embedding_dim: size of the time features.
    fourier_scale: standard deviation of the Fourier frequencies.
  """

  data_dim: int
  width: int = 128
  depth: int = 3
  embedding: str = "fourier"
  embedding_dim: int = 64
  fourier_scale: float = 1.0

  @nn.compact
  def __call__(self, u: jax.Array, t: jax.Array, train: bool = False) -> jax.Array:
    del train  # no dropout here; the argument keeps one call signature for every network
    features = embeddings.time_embedding(self.embedding, t, self.embedding_dim, self.fourier_scale)
    features = nn.Dense(self.width)(nn.silu(nn.Dense(self.width)(features)))
    h = nn.Dense(self.width)(u.reshape(u.shape[0], -1))
    for _ in range(self.depth):
      h = ResidualBlock(self.width)(h, features)
    return nn.Dense(self.data_dim)(nn.silu(nn.LayerNorm()(h)))


def check_config(model_config, data_shape: tuple[int, ...]) -> None:
  """Raises ValueError naming the first `model` field that cannot make a ScoreMLP for data_shape.

  Checked before any parameter exists because nothing later names the field: width = 0 divides by zero
  inside the initialiser, and depth = 0 or -1 silently trains a network without residual blocks.
  """
  if len(data_shape) != 1:
    raise ValueError(f"model.name = 'mlp' takes flat points (D,), got data of shape {data_shape}.")
  for field in ("width", "depth"):
    field_checks.require_int(f"model.{field}", model_config[field], 1)
  field_checks.require(model_config.embedding in embeddings.EMBEDDINGS, "model.embedding", model_config.embedding,
                       f"one of {embeddings.EMBEDDINGS}")
  dim = model_config.embedding_dim
  field_checks.require(field_checks.is_int(dim) and dim >= 2 and dim % 2 == 0, "model.embedding_dim", dim,
                       "an even integer >= 2 (half sines, half cosines)")
  if model_config.embedding == "fourier":
    field_checks.require_positive("model.fourier_scale", model_config.fourier_scale)
