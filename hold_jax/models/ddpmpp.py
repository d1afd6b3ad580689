"""DDPM++ (Song et al. 2021, score SDE, appendix H): the NCSN++ U-Net without FIR and without the input pyramid.

score_sde builds DDPM++ with its NCSN++ code and fir = False, progressive_input = 'none' (and BigGAN or
DDPM residual blocks, sinusoidal or Fourier time features, both free here), so this is that U-Net with those
two fields checked, not a second network.
"""
from __future__ import annotations

from hold_jax.models import ncsnpp


class DDPMpp(ncsnpp.NCSNpp):
  """(u (B, n, H, W, C), t (B,)) -> (B, H, W, C): NCSNpp with fir = False and progressive_input = 'none'."""

  fir: bool = False
  progressive_input: str = "none"

  def __post_init__(self):
    if self.fir:
      raise ValueError("model.fir = True is not DDPM++ (it resamples without FIR): set model.fir = False, or "
                       "model.name = 'ncsnpp'.")
    if self.progressive_input != "none":
      raise ValueError(f"model.progressive_input = {self.progressive_input!r} is not DDPM++ (it has no input "
                       "pyramid): set model.progressive_input = 'none', or model.name = 'ncsnpp'.")
    super().__post_init__()
