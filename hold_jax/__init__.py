"""hold_jax: diffusion generative modelling with high-order Langevin dynamics (HOLD) in JAX/Flax.

The Python API (hold_jax/api.py), imported on first use so that `import hold_jax` and the command line's
early checks stay free of JAX and TensorFlow:

  import hold_jax
  model = hold_jax.load("digits")     # or a workdir
  samples = model.sample(64)
"""
API = ("load", "Model", "pretrained_models", "summary", "to_pixels")
__all__ = list(API)


def __getattr__(name: str):
  if name in API:
    from hold_jax import api  # pylint: disable=g-import-not-at-top
    return getattr(api, name)
  raise AttributeError(f"module 'hold_jax' has no attribute {name!r}")
