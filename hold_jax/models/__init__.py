"""Score networks, one registry keyed by `config.model.name`."""
from __future__ import annotations

import flax.linen as nn

from hold_jax.models import ddpmpp
from hold_jax.models import mlp
from hold_jax.models import ncsnpp

MODELS = {"mlp": mlp.ScoreMLP, "ncsnpp": ncsnpp.NCSNpp, "ddpmpp": ddpmpp.DDPMpp}


def check_config(model_config, data_shape: tuple[int, ...]) -> None:
  """Raises ValueError naming the first bad `model` field for data of shape data_shape (without batch).

  create_model calls it, and config_checks (through create_model) before any work starts, so a size of 0, a
  negative depth or a NaN scale fails wherever a network is built, with its field named, instead of as a
  ZeroDivisionError in an initialiser or a run that trains a network without layers.
  """
  name = model_config.name
  if name not in MODELS:
    raise ValueError(f"model.name = {name!r} is not allowed: it must be one of {sorted(MODELS)}.")
  if name == "mlp":
    mlp.check_config(model_config, data_shape)
  else:
    ncsnpp.check_config(model_config, data_shape)


def create_model(model_config, data_shape: tuple[int, ...]) -> nn.Module:
  """The network named by model_config.name for data of shape data_shape (without batch).

  Every network is called as model.apply({'params': p}, u, t, train=False) with u (batch, n, *data_shape)
  and t (batch,); train=True (with rngs={'dropout': key}) turns dropout on where the network has it.
  The image networks take data_shape (H, W, C). A bad `model` field raises ValueError naming it (check_config).
  """
  check_config(model_config, data_shape)
  name = model_config.name
  if name == "mlp":
    return mlp.ScoreMLP(data_dim=data_shape[0], width=model_config.width, depth=model_config.depth,
                        embedding=model_config.embedding, embedding_dim=model_config.embedding_dim,
                        fourier_scale=model_config.fourier_scale)
  return ncsnpp.from_config(MODELS[name], model_config, data_shape)
