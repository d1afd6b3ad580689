"""The FID Inception-v3 network (TF graph `inception-2015-12-05`, as torch-fidelity reproduces it) in Flax:
its pre-processing and its layers. hold_jax/evaluation/feature_networks/inception.py loads the published weights into
it.

Every published FID, KID and IS number goes through one network: the TF1 graph `classify_image_graph_def.pb`
of 2015-12-05, fed RGB floats in [0, 255]. Its pytorch-fid/torch-fidelity torch port is the reference here
(docs/evaluation.md); this module is a NHWC linen port of it with the same parameter names.

What the graph does, in order (and what differs from torchvision's and Keras's InceptionV3):
  1. resize to 299 x 299 with TF1 ResizeBilinear, align_corners=False and *no* half-pixel centres: output
     pixel j samples the input at s = j * in/out, i.e. lo = floor(s), hi = min(lo + 1, in - 1),
     y = x[lo] + (x[hi] - x[lo]) (s - lo), first along the width, then along the height (`preprocess`);
  2. normalise x -> (x - 128) / 128, a range of [-1, 0.992];
  3. conv (no bias) -> batch norm y = gamma (x - mu) / sqrt(var + 1e-3) + beta (stored statistics; eps 1e-3,
     not torch's 1e-5) -> ReLU, for each of the 94 convolutions;
  4. the 3x3/1 average pools of the A, C and first E blocks (Mixed_5b-5d, 6b-6e, 7b) are TF's SAME pools,
     which average only the pixels inside the image: y = sum_{window inside} x / |window inside|, i.e.
     count_include_pad=False; torchvision counts the zero padding;
  5. the second E block (Mixed_7c) pools its pool branch with a 3x3/1 MAX pool (padding -inf), where the
     paper, torchvision and Keras use an average pool (pytorch-fid: "likely an error" in this graph);
  6. pool3 = mean over the 8 x 8 positions (2048 values; what FID and KID use), then logits = pool3 W + b with
     1008 classes (no aux head). IS by convention takes the logits *without* b, logits_unbiased = pool3 W
     (OpenAI improved-gan, StyleGAN2-ADA, torch-fidelity), so both are returned.
Breaking any of 1, 4 or 5 moves pool3 far more than the port differs from torch-fidelity (tests/test_inception.py
measures both on random weights), which is why each is a switch of `FIDInceptionV3` or a mode of `preprocess`
that the tests flip.

Precision: convolutions and the dense layer run at Precision.HIGHEST: JAX's default float32 precision on TPUs
(bf16 passes) and on Ampere+ GPUs (TF32) is below float32, and bf16-rounded features already move a FID
(docs/evaluation.md).
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

PREPROCESS_MODES = ("tf1", "half_pixel")
INPUT_SIZE = 299
NUM_PARAMS = 23_850_960
NUM_BATCH_STATS = 34_432

_BN_EPSILON = 1e-3
_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------------------------------------
# Pre-processing.


def _tf1_taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(lo, hi, frac), each (size_out,): TF1 ResizeBilinear's taps, align_corners=False, no half-pixel.

  All in float32 as TF computes them: scale = float(in) / out, s_j = float(j) * scale, lo = floor(s_j),
  hi = min(lo + 1, in - 1), frac = s_j - lo. Half-pixel resizes sample at (j + 1/2) scale - 1/2 instead.
  """
  scale = np.float32(size_in) / np.float32(size_out)
  source = np.arange(size_out, dtype=np.float32) * scale
  lo = np.floor(source).astype(np.int32)
  return lo, np.minimum(lo + 1, size_in - 1), source - lo.astype(np.float32)


def _resize_tf1(x: jax.Array, size: int) -> jax.Array:
  """(N, H, W, C) float32 -> (N, size, size, C), TF1 bilinear (`_tf1_taps`): width first, then height."""
  x_lo, x_hi, x_frac = _tf1_taps(x.shape[2], size)
  y_lo, y_hi, y_frac = _tf1_taps(x.shape[1], size)
  left, right = x[:, :, x_lo], x[:, :, x_hi]
  rows = left + (right - left) * x_frac[None, None, :, None]
  top, bottom = rows[:, y_lo], rows[:, y_hi]
  return top + (bottom - top) * y_frac[None, :, None, None]


def preprocess(images: jax.Array, mode: str = "tf1") -> jax.Array:
  """uint8 images (N, H, W, C), C in {1, 3} -> the network's input (N, 299, 299, 3) float32.

  Grey images are repeated to 3 channels. Then x is resized to 299 x 299 and normalised to (x - 128) / 128.
  mode 'tf1': the TF1 ResizeBilinear of the original graph (align_corners=False, no half-pixel centres:
    s = j * in/out), which torch-fidelity, NVIDIA's detector (EDM, StyleGAN) and TTUR use: the published
    numbers. Bit-identical to tf.raw_ops.ResizeBilinear(half_pixel_centers=False) (checked for inputs from
    2 x 2 to 512 x 384).
  mode 'half_pixel': bilinear with half-pixel centres (jax.image.resize, antialias=False), which is pytorch-fid's
    resize (F.interpolate(bilinear, align_corners=False)); a different resampling that shifts FID slightly.
    Offered to compare with pytorch-fid, not for reporting. Only the resize changes: pytorch-fid normalises
    with 2 x / 255 - 1, which this mode does not copy.
  """
  if mode not in PREPROCESS_MODES:
    raise ValueError(f"preprocess mode {mode!r} is not one of {PREPROCESS_MODES}")
  images = jnp.asarray(images)
  if images.dtype != jnp.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"expected uint8 images (N, H, W, C) with C in {{1, 3}}, got {images.dtype} "
                     f"{images.shape}")
  x = jnp.broadcast_to(images, (*images.shape[:3], 3)).astype(jnp.float32)
  if mode == "tf1":
    x = _resize_tf1(x, INPUT_SIZE)
  else:
    x = jax.image.resize(x, (x.shape[0], INPUT_SIZE, INPUT_SIZE, 3), "bilinear", antialias=False)
  return (x - 128.0) / 128.0


# ----------------------------------------------------------------------------------------------------------
# The network (NHWC). Submodule names are the torch module names, so parameter paths are the torch keys.


def _avg_pool_same(x: jax.Array, exclude_pad: bool) -> jax.Array:
  """3x3/1 average pool with one pixel of padding; exclude_pad divides by the pixels inside the image (TF)."""
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=not exclude_pad)


def _max_pool_same(x: jax.Array) -> jax.Array:
  """3x3/1 max pool with one pixel of -inf padding (torch max_pool2d(3, 1, 1))."""
  return nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))


def _max_pool_down(x: jax.Array) -> jax.Array:
  """3x3/2 VALID max pool: (N, H, W, C) -> (N, (H - 3) // 2 + 1, (W - 3) // 2 + 1, C)."""
  return nn.max_pool(x, (3, 3), (2, 2), "VALID")


class _BasicConv(nn.Module):
  """conv (no bias) -> batch norm (eps 1e-3) -> ReLU. `calibrate` normalises by the batch's own statistics
  and records them as the stored ones (momentum 0): one forward pass then fixes statistics under which every
  layer's pre-activation has mean beta and standard deviation gamma on that batch (inception.random_state_dict)."""
  features: int
  kernel: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: tuple[int, int] = (0, 0)
  calibrate: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pad_h, pad_w = self.padding
    x = nn.Conv(self.features, self.kernel, self.strides, ((pad_h, pad_h), (pad_w, pad_w)), use_bias=False,
                precision=_HIGHEST, name="conv")(x)
    x = nn.BatchNorm(use_running_average=not self.calibrate, momentum=0.0, epsilon=_BN_EPSILON,
                     use_fast_variance=False, name="bn")(x)
    return nn.relu(x)


class _InceptionA(nn.Module):
  """Mixed_5b-5d, 35 x 35: (N, 35, 35, C) -> (N, 35, 35, 224 + pool_features)."""
  pool_features: int
  exclude_pad: bool = True
  calibrate: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(_BasicConv, calibrate=self.calibrate)
    branch1x1 = conv(64, (1, 1), name="branch1x1")(x)
    branch5x5 = conv(48, (1, 1), name="branch5x5_1")(x)
    branch5x5 = conv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(branch5x5)
    branch3x3dbl = conv(64, (1, 1), name="branch3x3dbl_1")(x)
    branch3x3dbl = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(branch3x3dbl)
    branch3x3dbl = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(branch3x3dbl)
    branch_pool = conv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_same(x, self.exclude_pad))
    return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class _InceptionB(nn.Module):
  """Mixed_6a, 35 -> 17: (N, 35, 35, 288) -> (N, 17, 17, 768)."""
  calibrate: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(_BasicConv, calibrate=self.calibrate)
    branch3x3 = conv(384, (3, 3), strides=(2, 2), name="branch3x3")(x)
    branch3x3dbl = conv(64, (1, 1), name="branch3x3dbl_1")(x)
    branch3x3dbl = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(branch3x3dbl)
    branch3x3dbl = conv(96, (3, 3), strides=(2, 2), name="branch3x3dbl_3")(branch3x3dbl)
    return jnp.concatenate([branch3x3, branch3x3dbl, _max_pool_down(x)], axis=-1)


class _InceptionC(nn.Module):
  """Mixed_6b-6e, 17 x 17 with factorised 7x7 convolutions: (N, 17, 17, 768) -> (N, 17, 17, 768)."""
  channels_7x7: int
  exclude_pad: bool = True
  calibrate: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(_BasicConv, calibrate=self.calibrate)
    c7 = self.channels_7x7
    branch1x1 = conv(192, (1, 1), name="branch1x1")(x)
    branch7x7 = conv(c7, (1, 1), name="branch7x7_1")(x)
    branch7x7 = conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(branch7x7)
    branch7x7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(branch7x7)
    dbl = conv(c7, (1, 1), name="branch7x7dbl_1")(x)
    dbl = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(dbl)
    dbl = conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(dbl)
    dbl = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(dbl)
    dbl = conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(dbl)
    branch_pool = conv(192, (1, 1), name="branch_pool")(_avg_pool_same(x, self.exclude_pad))
    return jnp.concatenate([branch1x1, branch7x7, dbl, branch_pool], axis=-1)


class _InceptionD(nn.Module):
  """Mixed_7a, 17 -> 8: (N, 17, 17, 768) -> (N, 8, 8, 1280)."""
  calibrate: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(_BasicConv, calibrate=self.calibrate)
    branch3x3 = conv(192, (1, 1), name="branch3x3_1")(x)
    branch3x3 = conv(320, (3, 3), strides=(2, 2), name="branch3x3_2")(branch3x3)
    branch7x7x3 = conv(192, (1, 1), name="branch7x7x3_1")(x)
    branch7x7x3 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(branch7x7x3)
    branch7x7x3 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(branch7x7x3)
    branch7x7x3 = conv(192, (3, 3), strides=(2, 2), name="branch7x7x3_4")(branch7x7x3)
    return jnp.concatenate([branch3x3, branch7x7x3, _max_pool_down(x)], axis=-1)


class _InceptionE(nn.Module):
  """Mixed_7b/7c, 8 x 8: (N, 8, 8, C) -> (N, 8, 8, 2048). pool 'avg' (7b) or 'max' (7c, the graph's quirk)."""
  pool: str
  exclude_pad: bool = True
  calibrate: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(_BasicConv, calibrate=self.calibrate)
    branch1x1 = conv(320, (1, 1), name="branch1x1")(x)
    branch3x3 = conv(384, (1, 1), name="branch3x3_1")(x)
    branch3x3 = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(branch3x3),
                                 conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(branch3x3)], axis=-1)
    dbl = conv(448, (1, 1), name="branch3x3dbl_1")(x)
    dbl = conv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(dbl)
    dbl = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(dbl),
                           conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(dbl)], axis=-1)
    pooled = _max_pool_same(x) if self.pool == "max" else _avg_pool_same(x, self.exclude_pad)
    branch_pool = conv(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([branch1x1, branch3x3, dbl, branch_pool], axis=-1)


class _Logits(nn.Module):
  """The fc layer: pool3 (N, 2048) -> (pool3 W, pool3 W + b), each (N, 1008). IS takes the first (the
  improved-gan convention of the TF graph's 'softmax/logits/MatMul' input), classification the second."""

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], 1008), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (1008,), jnp.float32)
    unbiased = jnp.dot(x, kernel, precision=_HIGHEST)
    return unbiased, unbiased + bias


class FIDInceptionV3(nn.Module):
  """(N, 299, 299, 3) normalised images -> {'pool3': (N, 2048), 'logits_unbiased', 'logits': (N, 1008)}.

  The defaults are the TF graph. exclude_pad=False (torchvision's average pools) and last_pool='avg' (the paper's
  Mixed_7c) exist only so that tests can show each quirk matters; calibrate: see `_BasicConv`.
  """
  exclude_pad: bool = True
  last_pool: str = "max"
  calibrate: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    conv = functools.partial(_BasicConv, calibrate=self.calibrate)
    x = conv(32, (3, 3), strides=(2, 2), name="Conv2d_1a_3x3")(x)  # 149 x 149
    x = conv(32, (3, 3), name="Conv2d_2a_3x3")(x)  # 147
    x = conv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool_down(x)  # 73
    x = conv(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = conv(192, (3, 3), name="Conv2d_4a_3x3")(x)  # 71
    x = _max_pool_down(x)  # 35
    block_a = functools.partial(_InceptionA, exclude_pad=self.exclude_pad, calibrate=self.calibrate)
    x = block_a(32, name="Mixed_5b")(x)
    x = block_a(64, name="Mixed_5c")(x)
    x = block_a(64, name="Mixed_5d")(x)
    x = _InceptionB(calibrate=self.calibrate, name="Mixed_6a")(x)  # 17
    block_c = functools.partial(_InceptionC, exclude_pad=self.exclude_pad, calibrate=self.calibrate)
    for name, channels in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = block_c(channels, name=name)(x)
    x = _InceptionD(calibrate=self.calibrate, name="Mixed_7a")(x)  # 8
    block_e = functools.partial(_InceptionE, exclude_pad=self.exclude_pad, calibrate=self.calibrate)
    x = block_e("avg", name="Mixed_7b")(x)
    x = block_e(self.last_pool, name="Mixed_7c")(x)
    pool3 = jnp.mean(x, axis=(1, 2))
    logits_unbiased, logits = _Logits(name="fc")(pool3)
    return {"pool3": pool3, "logits_unbiased": logits_unbiased, "logits": logits}


def forward(network: FIDInceptionV3, variables, x: jax.Array) -> dict[str, jax.Array]:
  """The network on pre-processed input (N, 299, 299, 3); outputs in float32."""
  out = network.apply(variables, x)
  return {key: value.astype(jnp.float32) for key, value in out.items()}
