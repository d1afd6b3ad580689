"""2x up- and downsampling of NHWC images, plain (nearest / 2x2 mean) or FIR-filtered as in NCSN++.

FIR resampling is StyleGAN2's `upfirdn` with the separable kernel (1, 3, 3, 1), which score SDE (Song et al.
2021) uses for anti-aliasing (Zhang 2019, "Making convolutional networks shift-invariant again"). Here it is
one depthwise convolution: zero insertion is `lhs_dilation`, decimation is the stride, and the padding is
upfirdn's. Pixels outside the image count as zero, as in upfirdn, so a constant image stays constant in the
interior only (the outermost row and column are damped by the zeros beyond them).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

FIR_KERNEL = (1, 3, 3, 1)


def fir_kernel_2d(kernel_1d=FIR_KERNEL, gain: float = 1.0) -> np.ndarray:
  """(k,) taps -> (k, k) separable kernel outer(k, k), normalised to sum to `gain`."""
  taps = np.asarray(kernel_1d, dtype=np.float64)
  kernel = np.outer(taps, taps)
  return kernel * (gain / kernel.sum())


def fir_filter(x: jax.Array, kernel: np.ndarray, padding: tuple[int, int], stride: int = 1,
               dilation: int = 1) -> jax.Array:
  """Every channel of x (B, H, W, C) convolved with kernel (k, k): (B, H', W', C).

  `dilation` inserts dilation - 1 zeros between input pixels (upsampling), `padding` (before, after) pads
  both spatial axes with zeros, `stride` keeps every stride-th output (downsampling). The kernel is
  flipped so that this is a true convolution, as upfirdn's.
  """
  channels = x.shape[-1]
  flipped = jnp.asarray(kernel[::-1, ::-1], x.dtype)
  weights = jnp.tile(flipped[:, :, None, None], (1, 1, 1, channels))  # (k, k, 1, C): one filter per channel
  return jax.lax.conv_general_dilated(
      x, weights, window_strides=(stride, stride), padding=(padding, padding),
      lhs_dilation=(dilation, dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=channels)


def upsample_fir(x: jax.Array, kernel_1d=FIR_KERNEL, factor: int = 2) -> jax.Array:
  """(B, H, W, C) -> (B, factor H, factor W, C): zero insertion, then the FIR kernel with gain factor^2.

  upfirdn's padding is ((p + 1) // 2 + factor - 1, p // 2) around the zero-inserted image of length
  factor * H, p = len(kernel) - factor; `lhs_dilation` drops the factor - 1 trailing zeros of that image,
  so they are added back to the trailing pad.
  """
  p = len(kernel_1d) - factor
  kernel = fir_kernel_2d(kernel_1d, gain=factor**2)
  return fir_filter(x, kernel, ((p + 1) // 2 + factor - 1, p // 2 + factor - 1), dilation=factor)


def downsample_fir(x: jax.Array, kernel_1d=FIR_KERNEL, factor: int = 2) -> jax.Array:
  """(B, H, W, C) -> (B, H / factor, W / factor, C): the FIR kernel (gain 1), then every factor-th pixel."""
  p = len(kernel_1d) - factor
  return fir_filter(x, fir_kernel_2d(kernel_1d), ((p + 1) // 2, p // 2), stride=factor)


def upsample_nearest(x: jax.Array) -> jax.Array:
  """(B, H, W, C) -> (B, 2H, 2W, C), every pixel repeated 2 x 2."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def downsample_mean(x: jax.Array) -> jax.Array:
  """(B, H, W, C) -> (B, H/2, W/2, C), the mean of every 2 x 2 patch."""
  batch, height, width, channels = x.shape
  return x.reshape(batch, height // 2, 2, width // 2, 2, channels).mean(axis=(2, 4))


def upsample(x: jax.Array, fir: bool) -> jax.Array:
  """(B, H, W, C) -> (B, 2H, 2W, C): FIR-filtered or nearest-neighbour."""
  return upsample_fir(x) if fir else upsample_nearest(x)


def downsample(x: jax.Array, fir: bool) -> jax.Array:
  """(B, H, W, C) -> (B, H/2, W/2, C): FIR-filtered or 2 x 2 mean."""
  return downsample_fir(x) if fir else downsample_mean(x)
