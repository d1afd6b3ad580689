"""Sampler demo on a 2-D ring of Gaussians with its exact score: no download, no training.

  python -m hold_jax.cli.demo --config configs/mixture_demo.py --workdir runs/exact_demo      # make exact-demo
"""
import ml_collections

from hold_jax.configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.data = ml_collections.ConfigDict()
  config.data.num_components = 8
  config.data.radius = 2.0
  config.data.component_std = 0.2
  config.sampling.num_steps = 100
  config.sampling.num_samples = 2000
  config.sampling.batch_size = 1000
  return config
