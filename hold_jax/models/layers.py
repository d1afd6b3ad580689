"""Building blocks of the NCSN++ / DDPM++ U-Nets (Song et al. 2021, score SDE, appendix H), NHWC throughout.

Initialisation, normalisation and block layouts follow score_sde's `layerspp.py`, so that parameter counts
and the state at initialisation match its networks: every weight uses "default init" (variance scaling,
fan_avg, uniform), biases start at zero, and the last layer of every residual branch is scaled by
`init_scale` (0 in the configs: every block starts as the identity, or as x / sqrt 2 with skip_rescale).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from hold_jax.models import embeddings
from hold_jax.models import resampling


def default_init(scale: float = 1.0) -> nn.initializers.Initializer:
  """score_sde's initialiser: variance scaling (fan_avg, uniform), scale 0 read as 1e-10.

  Why 1e-10 and not 0: score_sde does so (TF's variance scaling rejects 0), and behind an exactly zero
  layer the weights before it would get no gradient at the first step.
  """
  return nn.initializers.variance_scaling(scale if scale > 0 else 1e-10, "fan_avg", "uniform")


def conv3x3(features: int, init_scale: float = 1.0, stride: int = 1, padding="SAME") -> nn.Conv:
  """3x3 convolution with default init and zero bias."""
  return nn.Conv(features, (3, 3), strides=(stride, stride), padding=padding,
                 kernel_init=default_init(init_scale))


def conv1x1(features: int, init_scale: float = 1.0) -> nn.Conv:
  """1x1 convolution with default init and zero bias."""
  return nn.Conv(features, (1, 1), kernel_init=default_init(init_scale))


def nin(features: int, init_scale: float = 0.1) -> nn.Dense:
  """Network in network: a per-pixel linear map of the channels (a 1x1 conv), score_sde's init scale 0.1."""
  return nn.Dense(features, kernel_init=default_init(init_scale))


def group_norm(channels: int) -> nn.GroupNorm:
  """GroupNorm with min(channels // 4, 32) groups, as score_sde (so 4 channels a group for narrow layers)."""
  return nn.GroupNorm(num_groups=min(channels // 4, 32), epsilon=1e-6)


def residual_sum(skip: jax.Array, residual: jax.Array, skip_rescale: bool) -> jax.Array:
  """skip + residual, divided by sqrt 2 when skip_rescale (keeps the variance of a sum of two unit signals)."""
  total = skip + residual
  return total / math.sqrt(2.0) if skip_rescale else total


class TimeEmbedding(nn.Module):
  """t (B,) -> (B, 4 nf): time features, then Dense(4 nf) - silu - Dense(4 nf), as score_sde.

  'fourier' is score_sde's Gaussian Fourier projection with embedding size nf, so 2 nf features (sin and
  cos) of log t; 'sinusoidal' is DDPM's transformer embedding of 1000 t with nf features.
  """

  nf: int
  embedding: str = "fourier"
  fourier_scale: float = 16.0

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    num_features = 2 * self.nf if self.embedding == "fourier" else self.nf
    features = embeddings.time_embedding(self.embedding, t, num_features, self.fourier_scale)
    features = nn.Dense(4 * self.nf, kernel_init=default_init())(features)
    return nn.Dense(4 * self.nf, kernel_init=default_init())(nn.silu(features))


def time_bias(temb: jax.Array, channels: int) -> jax.Array:
  """(B, E) time embedding -> (B, 1, 1, channels): a per-channel bias that conditions a block on t."""
  return nn.Dense(channels, kernel_init=default_init())(nn.silu(temb))[:, None, None, :]


class ResnetBlockDDPM(nn.Module):
  """x (B, H, W, C), temb (B, E) -> (B, H, W, out_channels): DDPM's residual block (score_sde's DDPM++ form).

  h = conv3x3(silu(GN(x))) + Dense(silu(temb)); h = conv3x3_init_scale(dropout(silu(GN(h)))); the skip is
  a NIN when the width changes; the sum is divided by sqrt 2 when skip_rescale.
  """

  out_channels: int | None = None
  dropout: float = 0.0
  skip_rescale: bool = True
  init_scale: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array, train: bool = False) -> jax.Array:
    out_channels = self.out_channels or x.shape[-1]
    h = conv3x3(out_channels)(nn.silu(group_norm(x.shape[-1])(x)))
    h = h + time_bias(temb, out_channels)
    h = nn.silu(group_norm(out_channels)(h))
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    h = conv3x3(out_channels, init_scale=self.init_scale)(h)
    if x.shape[-1] != out_channels:
      x = nin(out_channels)(x)
    return residual_sum(x, h, self.skip_rescale)


class ResnetBlockBigGAN(nn.Module):
  """x (B, H, W, C), temb (B, E) -> (B, H', W', out_channels): BigGAN's residual block as in NCSN++.

  As ResnetBlockDDPM, but it can resample: with up (down), both the branch (after its first norm and
  activation) and the skip are upsampled (downsampled) 2x, FIR-filtered or plain, so H' = 2H (H / 2).
  The skip is a 1x1 conv whenever the width or the size changes.
  """

  out_channels: int | None = None
  up: bool = False
  down: bool = False
  fir: bool = True
  dropout: float = 0.0
  skip_rescale: bool = True
  init_scale: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array, train: bool = False) -> jax.Array:
    out_channels = self.out_channels or x.shape[-1]
    h = nn.silu(group_norm(x.shape[-1])(x))
    if self.up:
      h, x = resampling.upsample(h, self.fir), resampling.upsample(x, self.fir)
    elif self.down:
      h, x = resampling.downsample(h, self.fir), resampling.downsample(x, self.fir)
    h = conv3x3(out_channels)(h)
    h = h + time_bias(temb, out_channels)
    h = nn.silu(group_norm(out_channels)(h))
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    h = conv3x3(out_channels, init_scale=self.init_scale)(h)
    if x.shape[-1] != out_channels or self.up or self.down:
      x = conv1x1(out_channels)(x)
    return residual_sum(x, h, self.skip_rescale)


class AttentionBlock(nn.Module):
  """x (B, H, W, C) -> (B, H, W, C): single-head self-attention over all H W pixels, then a residual sum.

  q, k, v are NINs of GN(x); weights softmax(q k^T / sqrt C) over the pixels; the output NIN uses init_scale
  (0: the block starts as the identity, or x / sqrt 2 with skip_rescale).
  """

  skip_rescale: bool = True
  init_scale: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, height, width, channels = x.shape
    h = group_norm(channels)(x)
    query, key, value = nin(channels)(h), nin(channels)(h), nin(channels)(h)
    query, key, value = (a.reshape(batch, height * width, channels) for a in (query, key, value))
    logits = jnp.einsum("bpc,bqc->bpq", query, key) / math.sqrt(channels)  # (B, pixels, pixels)
    h = jnp.einsum("bpq,bqc->bpc", jax.nn.softmax(logits, axis=-1), value)
    h = nin(channels, init_scale=self.init_scale)(h.reshape(batch, height, width, channels))
    return residual_sum(x, h, self.skip_rescale)


class FIRUpsampleConv(nn.Module):
  """x (B, H, W, C) -> (B, 2H, 2W, features): StyleGAN2's fused "upsample, then 3x3 conv".

  A stride-2 transposed 3x3 conv (B, 2H + 1, 2W + 1, features), then the FIR kernel with gain 4 and padding
  (1, 1). With a kernel that is the identity at its centre this is exactly `resampling.upsample_fir`.
  The bias is added after the filter: a bias before it would be multiplied by the gain.
  """

  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = nn.ConvTranspose(self.features, (3, 3), strides=(2, 2), padding="VALID", use_bias=False,
                         kernel_init=default_init())(x)
    h = resampling.fir_filter(h, resampling.fir_kernel_2d(gain=4.0), (1, 1))
    return h + self.param("bias", nn.initializers.zeros, (self.features,), h.dtype)


class FIRDownsampleConv(nn.Module):
  """x (B, H, W, C) -> (B, H/2, W/2, features): StyleGAN2's fused "3x3 conv, then downsample".

  The FIR kernel with padding (2, 2) (B, H + 1, W + 1, C), then a stride-2 valid 3x3 conv. With a kernel
  that is the identity at its centre this is exactly `resampling.downsample_fir`.
  """

  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = resampling.fir_filter(x, resampling.fir_kernel_2d(), (2, 2))
    return conv3x3(self.features, stride=2, padding="VALID")(h)


class Upsample(nn.Module):
  """x (B, H, W, C) -> (B, 2H, 2W, out_channels): FIR or nearest upsampling, optionally with a 3x3 conv.

  Without a conv the width cannot change, so out_channels must then be None or C.
  """

  out_channels: int | None = None
  with_conv: bool = False
  fir: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    out_channels = self.out_channels or x.shape[-1]
    if not self.with_conv:
      if out_channels != x.shape[-1]:
        raise ValueError(f"Upsample without a conv keeps the {x.shape[-1]} channels, asked for {out_channels}.")
      return resampling.upsample(x, self.fir)
    if self.fir:
      return FIRUpsampleConv(out_channels)(x)
    return conv3x3(out_channels)(resampling.upsample_nearest(x))


class Downsample(nn.Module):
  """x (B, H, W, C) -> (B, H/2, W/2, out_channels): FIR or 2x2-mean downsampling, or a strided 3x3 conv.

  The plain strided conv pads one row and column after the image, as score_sde's (0, 1, 0, 1) padding.
  """

  out_channels: int | None = None
  with_conv: bool = False
  fir: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    out_channels = self.out_channels or x.shape[-1]
    if not self.with_conv:
      if out_channels != x.shape[-1]:
        raise ValueError(f"Downsample without a conv keeps the {x.shape[-1]} channels, asked for {out_channels}.")
      return resampling.downsample(x, self.fir)
    if self.fir:
      return FIRDownsampleConv(out_channels)(x)
    return conv3x3(out_channels, stride=2, padding=((0, 1), (0, 1)))(x)
