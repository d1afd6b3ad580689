"""NCSN++ (Song et al. 2021, score SDE, appendix H): the U-Net score network for images (docs/process.md).

The network sees all n blocks of the state, stacked as n C channels, and returns C channels: its output
for the last block (an eps prediction). Its layout follows score_sde's `ncsnpp.py` with
progressive = 'none' (no output pyramid), which is what score_sde's CIFAR-10 and DDPM++ configs use:

  conv3x3 -> per resolution: num_res_blocks x (resblock [+ attention]) then a downsampling step
          -> middle: resblock, attention, resblock
          -> per resolution, coarse to fine: (num_res_blocks + 1) x resblock on [h, skip]
             [+ attention] then an upsampling step -> GroupNorm, silu, conv3x3 to C channels.

DDPM++ is this U-Net without FIR and without the input pyramid (`ddpmpp.py`).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hold_jax import field_checks
from hold_jax.models import embeddings
from hold_jax.models import layers

RESBLOCK_TYPES = ("biggan", "ddpm")
PROGRESSIVE_INPUTS = ("none", "residual")


def stack_blocks(u: jax.Array) -> jax.Array:
  """(B, n, H, W, C) blocks -> (B, H, W, n C) channels; channel k C + c is channel c of block k."""
  batch, order, height, width, channels = u.shape
  return jnp.moveaxis(u, 1, 3).reshape(batch, height, width, order * channels)


class NCSNpp(nn.Module):
  """(u (B, n, H, W, C), t (B,)) -> (B, H, W, C), the network output for the last block.

  Attributes (the `model` fields of configs/images.py):
    nf: base width; level i has nf * ch_mult[i] channels.
    ch_mult: width multiplier per resolution; len(ch_mult) resolutions H, H/2, ...
    num_res_blocks: residual blocks per resolution on the way down (one more on the way up).
    attn_resolutions: resolutions (image heights) with self-attention after their residual blocks.
    dropout: dropout rate inside the residual blocks, active only with train=True.
    resblock_type: 'biggan' (resampling inside the residual blocks) or 'ddpm' (separate Up/Downsample).
    embedding, fourier_scale: the time features (layers.TimeEmbedding).
    skip_rescale: divide every residual sum by sqrt 2.
    resample_with_conv: Up/Downsample with a conv (used with resblock_type 'ddpm' only: BigGAN blocks
      resample inside the block).
    fir: FIR (1, 3, 3, 1) resampling instead of nearest / 2x2 mean.
    progressive_input: 'residual' adds an input pyramid: the input is downsampled alongside the network
      (with a conv) and added to h after every downsampling step; 'none' has no pyramid.
    init_scale: scale of the last layer of every residual branch and of the output conv.
  """

  nf: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 4
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  resblock_type: str = "biggan"
  embedding: str = "fourier"
  fourier_scale: float = 16.0
  skip_rescale: bool = True
  resample_with_conv: bool = True
  fir: bool = True
  progressive_input: str = "residual"
  init_scale: float = 0.0

  def _resblock(self, out_channels: int | None = None, up: bool = False, down: bool = False) -> nn.Module:
    common = dict(out_channels=out_channels, dropout=self.dropout, skip_rescale=self.skip_rescale,
                  init_scale=self.init_scale)
    if self.resblock_type == "ddpm":
      return layers.ResnetBlockDDPM(**common)
    return layers.ResnetBlockBigGAN(up=up, down=down, fir=self.fir, **common)

  def _attention(self) -> nn.Module:
    return layers.AttentionBlock(skip_rescale=self.skip_rescale, init_scale=self.init_scale)

  @nn.compact
  def __call__(self, u: jax.Array, t: jax.Array, train: bool = False) -> jax.Array:
    data_channels = u.shape[-1]
    x = stack_blocks(u)
    temb = layers.TimeEmbedding(self.nf, self.embedding, self.fourier_scale)(t.astype(u.dtype))
    last_level = len(self.ch_mult) - 1

    # Down: every output is kept as a skip for the way up. The input pyramid (progressive_input 'residual')
    # gives every resolution a direct, learned view of the input, not only what survived the blocks above.
    input_pyramid = x
    h = layers.conv3x3(self.nf)(x)
    skips = [h]
    for level, mult in enumerate(self.ch_mult):
      for _ in range(self.num_res_blocks):
        h = self._resblock(self.nf * mult)(h, temb, train)
        if h.shape[1] in self.attn_resolutions:
          h = self._attention()(h)
        skips.append(h)
      if level != last_level:
        if self.resblock_type == "ddpm":
          h = layers.Downsample(with_conv=self.resample_with_conv, fir=self.fir)(h)
        else:
          h = self._resblock(down=True)(h, temb, train)
        if self.progressive_input == "residual":
          input_pyramid = layers.Downsample(h.shape[-1], with_conv=True, fir=self.fir)(input_pyramid)
          h = input_pyramid = layers.residual_sum(input_pyramid, h, self.skip_rescale)
        skips.append(h)

    h = self._resblock()(h, temb, train)
    h = self._attention()(h)
    h = self._resblock()(h, temb, train)

    # Up: each resolution consumes its num_res_blocks + 1 skips.
    for level in reversed(range(len(self.ch_mult))):
      for _ in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = self._resblock(self.nf * self.ch_mult[level])(h, temb, train)
      if h.shape[1] in self.attn_resolutions:
        h = self._attention()(h)
      if level != 0:
        if self.resblock_type == "ddpm":
          h = layers.Upsample(with_conv=self.resample_with_conv, fir=self.fir)(h)
        else:
          h = self._resblock(up=True)(h, temb, train)
    assert not skips, "every skip is consumed"

    h = nn.silu(layers.group_norm(h.shape[-1])(h))
    # With init_scale = 0 (the configs) the output conv starts at variance scale 1e-10, as score_sde's: the
    # network starts by predicting eps ~ 0 (a near-zero output), so the eps-weighted BCSM loss starts at
    # E|eps|^2 = 1 per coordinate instead of 2 for a unit-scale random output.
    return layers.conv3x3(data_channels, init_scale=self.init_scale)(h)


def group_norm_widths(nf: int, ch_mult: Sequence[int], num_res_blocks: int) -> set[int]:
  """Channel counts that NCSNpp normalises with layers.group_norm (inputs of blocks, concatenated skips)."""
  skip_widths = [nf]
  widths = {nf}
  width = nf
  for level, mult in enumerate(ch_mult):
    for _ in range(num_res_blocks):
      width = nf * mult
      widths.add(width)
      skip_widths.append(width)
    if level != len(ch_mult) - 1:
      skip_widths.append(width)
  for level in reversed(range(len(ch_mult))):
    for _ in range(num_res_blocks + 1):
      widths.add(width + skip_widths.pop())
      width = nf * ch_mult[level]
      widths.add(width)
  return widths


def check_config(model_config, data_shape: tuple[int, ...]) -> None:
  """Raises ValueError naming the first field of `model_config` that cannot make a network for data_shape."""
  name = model_config.name
  if len(data_shape) != 3 or data_shape[0] != data_shape[1]:
    raise ValueError(f"model.name = {name!r} takes square images (H, W, C), got data of shape {data_shape}.")
  if model_config.resblock_type not in RESBLOCK_TYPES:
    raise ValueError(f"model.resblock_type = {model_config.resblock_type!r} is not allowed: it must be one of "
                     f"{RESBLOCK_TYPES}.")
  if model_config.progressive_input not in PROGRESSIVE_INPUTS:
    raise ValueError(f"model.progressive_input = {model_config.progressive_input!r} is not allowed: it must be "
                     f"one of {PROGRESSIVE_INPUTS}.")
  if model_config.embedding not in embeddings.EMBEDDINGS:
    raise ValueError(f"model.embedding = {model_config.embedding!r} is not allowed: it must be one of "
                     f"{embeddings.EMBEDDINGS}.")
  # Every test below is positive (`not (ok)`), so NaN, inf, a float size or a string fails it with the field
  # named instead of passing (NaN < 1 is False) or raising a TypeError from int() or tuple().
  ch_mult = model_config.ch_mult
  if not (isinstance(ch_mult, (tuple, list)) and ch_mult and all(field_checks.is_int(m) and m >= 1
                                                                  for m in ch_mult)):
    raise ValueError(f"model.ch_mult = {ch_mult!r} must be a non-empty sequence of positive integers.")
  ch_mult = tuple(ch_mult)
  if not (field_checks.is_int(model_config.nf) and model_config.nf >= 4):
    raise ValueError(f"model.nf = {model_config.nf!r} must be an integer >= 4 (GroupNorm uses groups of 4 "
                     "channels).")
  if not (field_checks.is_int(model_config.num_res_blocks) and model_config.num_res_blocks >= 1):
    raise ValueError(f"model.num_res_blocks = {model_config.num_res_blocks!r} must be an integer >= 1.")
  if not (field_checks.is_finite(model_config.dropout) and 0 <= model_config.dropout < 1):
    raise ValueError(f"model.dropout = {model_config.dropout!r} must lie in [0, 1).")
  if model_config.embedding == "fourier" and not (field_checks.is_finite(model_config.fourier_scale)
                                                  and model_config.fourier_scale > 0):
    raise ValueError(f"model.fourier_scale = {model_config.fourier_scale!r} must be a finite number > 0.")
  if not (field_checks.is_finite(model_config.init_scale) and model_config.init_scale >= 0):
    raise ValueError(f"model.init_scale = {model_config.init_scale!r} must be a finite number >= 0.")
  attn_resolutions = model_config.attn_resolutions
  if not (isinstance(attn_resolutions, (tuple, list)) and all(field_checks.is_int(r) for r in attn_resolutions)):
    raise ValueError(f"model.attn_resolutions = {attn_resolutions!r} must be a sequence of integers (image "
                     "heights; empty for no attention).")

  size = data_shape[0]
  factor = 2 ** (len(ch_mult) - 1)
  if size % factor:
    raise ValueError(f"data.image_size = {size} must be divisible by 2**(len(model.ch_mult) - 1) = {factor}: "
                     f"model.ch_mult = {ch_mult} halves the image {len(ch_mult) - 1} times.")
  resolutions = tuple(size // 2**level for level in range(len(ch_mult)))
  unreached = [r for r in model_config.attn_resolutions if r not in resolutions]
  if unreached:
    raise ValueError(f"model.attn_resolutions = {tuple(model_config.attn_resolutions)} has {unreached}, never "
                     f"reached: with data.image_size = {size} and model.ch_mult = {ch_mult} the resolutions "
                     f"are {resolutions}.")
  for width in sorted(group_norm_widths(model_config.nf, ch_mult, model_config.num_res_blocks)):
    groups = min(width // 4, 32)
    if width % groups:
      raise ValueError(f"model.nf = {model_config.nf} with model.ch_mult = {ch_mult} gives a layer of {width} "
                       f"channels, which GroupNorm cannot split into min({width} // 4, 32) = {groups} groups: "
                       f"use an nf that is a multiple of 32 (or of 4 when every width stays <= 128).")


def from_config(model_class: type[NCSNpp], model_config, data_shape: tuple[int, ...]) -> NCSNpp:
  """NCSNpp or a subclass built from the `model` fields, after check_config."""
  check_config(model_config, data_shape)
  return model_class(
      nf=model_config.nf, ch_mult=tuple(model_config.ch_mult), num_res_blocks=model_config.num_res_blocks,
      attn_resolutions=tuple(model_config.attn_resolutions), dropout=model_config.dropout,
      resblock_type=model_config.resblock_type, embedding=model_config.embedding,
      fourier_scale=model_config.fourier_scale, skip_rescale=model_config.skip_rescale,
      resample_with_conv=model_config.resample_with_conv, fir=model_config.fir,
      progressive_input=model_config.progressive_input, init_scale=model_config.init_scale)
