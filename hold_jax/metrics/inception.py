"""The FID Inception-v3 network (TF graph `inception-2015-12-05`, as torch-fidelity reproduces it) in Flax.

Every published FID, KID and IS number goes through one network: the TF1 graph `classify_image_graph_def.pb`
of 2015-12-05, fed RGB floats in [0, 255]. Its pytorch-fid/torch-fidelity torch port is the reference here
(FID_FACTS.md sections 1.2-1.5); this module is a NHWC linen port of it with the same parameter names.

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
Breaking any of 1, 4 or 5 moves pool3 by 20-55 % of its largest value on the tests' random weights (the
port agrees with torch-fidelity to ~1e-5), which is why each is a switch of the private `_FIDInceptionV3` or
a mode of `preprocess` that tests/test_inception.py flips.

Weights: the published torch state_dict `pt_inception-2015-12-05-6726825d.pth` (pytorch-fid's GitHub release
'fid_weights'; torch-fidelity's `weights-inception-2015-12-05-6726825d.pth`, release v0.2.0, carries the same
tag, so almost certainly the same bytes).
The hex tag in the name is the start of the file's SHA-256 (torch hub's rule), checked on load. It is never
downloaded here; pass its path (local or gs://). Its 472 tensors (plus num_batches_tracked, ignored) map one
to one onto the Flax tree: `{Block}.{branch}.conv.weight` (O, I, kh, kw) -> `params/{Block}/{branch}/conv/
kernel` (kh, kw, I, O); `.bn.weight/bias` -> `params/.../bn/scale,bias`; `.bn.running_mean/var` ->
`batch_stats/.../bn/mean,var`; `fc.weight` (1008, 2048) -> `params/fc/kernel` (2048, 1008) and `fc.bias`.
There are 23,850,960 trainable values and 34,432 statistics. The graph's batch norm has no learned scale (the
file's bn.weight are ones, by inference), but the scale is applied all the same, so that any file is used
exactly as torch uses it.

Precision: convolutions and the dense layer run at Precision.HIGHEST: JAX's default float32 precision on TPUs
(bf16 passes) and on Ampere+ GPUs (TF32) is below float32, and bf16-rounded features already move a 50k FID by
~1e-4 (FID_FACTS.md section 4).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import math
import zipfile
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import traverse_util

from hold_jax.metrics import torch_weights

PREPROCESS_MODES = ("tf1", "half_pixel")
NETWORK_NAME = "inception-2015-12-05"
INPUT_SIZE = 299
NUM_PARAMS = 23_850_960
NUM_BATCH_STATS = 34_432
PUBLISHED_SHA256_PREFIX = "6726825d"
PUBLISHED_FILE = (
    "the published FID Inception weights are pt_inception-2015-12-05-6726825d.pth from pytorch-fid's GitHub "
    "releases (mseitzer/pytorch-fid, release 'fid_weights'), also published as "
    "weights-inception-2015-12-05-6726825d.pth in torch-fidelity's GitHub releases (toshas/torch-fidelity, "
    "v0.2.0); download one by hand and pass its path (nothing is downloaded here)")

_BN_EPSILON = 1e-3
_CALIBRATION_SIZES = (16, 32, 64, 128)  # uint8 noise images, resized to 299: smooth to rough inputs
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
    resize (F.interpolate(bilinear, align_corners=False)); a different resampling (mean |delta| of 36/255 on
    32 -> 299 noise) that shifts FID slightly. Offered to compare with pytorch-fid, not for reporting. Only
    the resize changes: pytorch-fid normalises with 2 x / 255 - 1, which this mode does not copy.
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
  layer's pre-activation has mean beta and standard deviation gamma on that batch (`random_state_dict`)."""
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


class _FIDInceptionV3(nn.Module):
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


def _forward(network: _FIDInceptionV3, variables, x: jax.Array) -> dict[str, jax.Array]:
  """The network on pre-processed input (N, 299, 299, 3); outputs in float32."""
  out = network.apply(variables, x)
  return {key: value.astype(jnp.float32) for key, value in out.items()}


# ----------------------------------------------------------------------------------------------------------
# Torch state_dict <-> Flax variables.

_TORCH_LEAF = {("params", "kernel"): "weight", ("params", "scale"): "weight", ("params", "bias"): "bias",
               ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}


@dataclasses.dataclass(frozen=True)
class _Slot:
  """Where a torch key lives in the Flax tree, and its shape in each layout."""
  flax_path: tuple[str, ...]  # (collection, module, ..., leaf)
  flax_shape: tuple[int, ...]
  torch_shape: tuple[int, ...]


def _to_torch_shape(flax_path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
  if flax_path[-1] == "kernel" and len(shape) == 4:  # conv (kh, kw, I, O) -> (O, I, kh, kw)
    return (shape[3], shape[2], shape[0], shape[1])
  if flax_path[-1] == "kernel":  # dense (in, out) -> (out, in)
    return (shape[1], shape[0])
  return shape


def _to_flax_layout(array: np.ndarray) -> np.ndarray:
  """A torch weight in the Flax layout: conv (O, I, kh, kw) -> (kh, kw, I, O), dense (out, in) -> (in, out)."""
  if array.ndim == 4:
    return array.transpose(2, 3, 1, 0)
  return array.T if array.ndim == 2 else array


@functools.lru_cache(maxsize=None)
def _slots() -> dict[str, _Slot]:
  """{torch key: _Slot} of the network, from jax.eval_shape of its init (nothing is computed)."""
  shapes = jax.eval_shape(_FIDInceptionV3().init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
  slots = {}
  for path, leaf in traverse_util.flatten_dict(shapes).items():
    collection, *modules, leaf_name = path
    key = ".".join((*modules, _TORCH_LEAF[(collection, leaf_name)]))
    slots[key] = _Slot(path, tuple(leaf.shape), _to_torch_shape(path, tuple(leaf.shape)))
  return slots


def _state_dict_problems(state_dict: dict[str, Any]) -> list[str]:
  """Missing keys, unexpected keys and wrong shapes of `state_dict` against the network (num_batches_tracked
  is ignored: torch writes it for every batch norm, the network has no use for it)."""
  slots = _slots()
  given = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
  problems = [f"missing key {k} (shape {slots[k].torch_shape})" for k in sorted(slots) if k not in given]
  problems += [f"unexpected key {k}" for k in sorted(given) if k not in slots]
  problems += [f"key {k} has shape {tuple(np.shape(given[k]))}, expected {slots[k].torch_shape}"
               for k in sorted(given) if k in slots and tuple(np.shape(given[k])) != slots[k].torch_shape]
  return problems


def params_from_state_dict(state_dict: dict[str, np.ndarray]) -> dict[str, Any]:
  """Torch-layout {key: array} -> Flax variables {'params': ..., 'batch_stats': ...} (float32 jax arrays).

  Every key and shape must match the network exactly (num_batches_tracked ignored); ValueError lists what
  does not.
  """
  problems = _state_dict_problems(state_dict)
  if problems:
    shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
    raise ValueError(f"the state_dict does not fit the FID Inception network ({len(problems)} problems in "
                     f"{len(state_dict)} keys; the network has {len(_slots())}): {shown}")
  flat = {slot.flax_path: jnp.asarray(_to_flax_layout(np.asarray(state_dict[key], np.float32)))
          for key, slot in _slots().items()}
  return traverse_util.unflatten_dict(flat)


def _calibrated_statistics(params, images: list[np.ndarray]) -> dict[str, Any]:
  """batch_stats under which every batch norm's output has mean beta and standard deviation gamma on `images`
  (uint8 (N_i, H_i, W_i, 3) of any sizes, each resized to 299 by `preprocess`)."""
  network = _FIDInceptionV3(calibrate=True)
  x = jnp.concatenate([preprocess(jnp.asarray(group), "tf1") for group in images])
  _, updates = jax.jit(lambda p, x: network.apply({"params": p}, x, mutable=["batch_stats"]))(params, x)
  return updates["batch_stats"]


def random_state_dict(seed: int) -> dict[str, np.ndarray]:
  """Seeded random weights in the torch layout and key names (float32; num_batches_tracked int64 zeros).

  For tests: convs He-normal N(0, 2 / fan_in), bn.weight ~ U(0.5, 1.5) (not ones, so that a dropped scale
  shows), bn.bias ~ 0.1 N(0, 1), fc ~ N(0, 1 / 2048) and 0.1 N(0, 1). The running statistics are then
  calibrated by one forward pass on uint8 noise images of 16, 32, 64 and 128 pixels resized to 299
  (`_BasicConv`), smooth to rough inputs: without calibration activations drift until pool3 barely differs
  between images, and calibrated on one input size only, pool3 of other sizes grows ~25-fold. Draws come from
  np.random.RandomState (whose streams numpy keeps fixed) in sorted key order, so a seed gives the same
  weights on any machine up to the float32 rounding of the calibration pass.
  """
  rng = np.random.RandomState(seed)
  state_dict = {}
  for key in sorted(_slots()):
    shape = _slots()[key].torch_shape
    if key.endswith("conv.weight"):
      value = rng.standard_normal(shape) * math.sqrt(2.0 / np.prod(shape[1:]))
    elif key.endswith("bn.weight"):
      value = rng.uniform(0.5, 1.5, shape)
    elif key.endswith("running_mean"):
      value = np.zeros(shape)
    elif key.endswith("running_var"):
      value = np.ones(shape)
    elif key == "fc.weight":
      value = rng.standard_normal(shape) / math.sqrt(shape[1])
    else:  # bn.bias, fc.bias
      value = 0.1 * rng.standard_normal(shape)
    state_dict[key] = value.astype(np.float32)
  images = [rng.randint(0, 256, size=(1, size, size, 3)).astype(np.uint8) for size in _CALIBRATION_SIZES]
  stats = traverse_util.flatten_dict(_calibrated_statistics(params_from_state_dict(state_dict)["params"], images))
  for path, value in stats.items():
    state_dict[".".join((*path[:-1], _TORCH_LEAF[("batch_stats", path[-1])]))] = np.asarray(value, np.float32)
    state_dict[".".join((*path[:-1], "num_batches_tracked"))] = np.zeros((), np.int64)
  return state_dict


# ----------------------------------------------------------------------------------------------------------
# Loading the published weights.


@dataclasses.dataclass(frozen=True)
class FeatureNetwork:
  """A loaded feature extractor.

  Attributes:
    apply: uint8 images (N, H, W, C), C in {1, 3} -> {'pool3': (N, 2048) float32, 'logits': (N, 1008) float32,
      'logits_unbiased': (N, 1008) float32} (logits = pool3 W + b; logits_unbiased = pool3 W, what IS uses by
      convention). Jitted (one compilation per input shape), with the weights on the device
      as an argument, not as constants: a jax.tree_util.Partial, so it can also be passed into a jitted
      function.
    weights_sha256: SHA-256 of the weights file, to record next to every number computed with it.
    resize: the `preprocess` mode.
    name: 'inception-2015-12-05'.
  """
  apply: Callable[[jax.Array], dict[str, jax.Array]]
  weights_sha256: str
  resize: str
  name: str = NETWORK_NAME


def _read_weights(path: epath.Path, data: bytes) -> dict[str, np.ndarray]:
  """{key: array} of an .npz (torch key names and layouts) or a torch .pth (zip or legacy) file."""
  try:
    if data[:4] == b"PK\x03\x04":
      with zipfile.ZipFile(io.BytesIO(data)) as archive:
        is_npz = not any(name.endswith("/data.pkl") for name in archive.namelist())
      if is_npz:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
          return {key: npz[key] for key in npz.files}
    return torch_weights.read_state_dict(data)
  except (ValueError, OSError, zipfile.BadZipFile) as error:
    raise ValueError(f"cannot read FID Inception weights {path}: {error}. {PUBLISHED_FILE}") from error


def _check_hash(path: epath.Path, digest: str, expected_sha256: str | None) -> None:
  if expected_sha256 is not None and digest != expected_sha256.strip().lower():
    raise ValueError(f"FID Inception weights {path} have SHA-256 {digest}, expected {expected_sha256}: a "
                     f"different or damaged file. {PUBLISHED_FILE}")
  if expected_sha256 is None and not digest.startswith(PUBLISHED_SHA256_PREFIX):
    raise ValueError(f"FID Inception weights {path} have SHA-256 {digest}, which does not start with the "
                     f"published tag {PUBLISHED_SHA256_PREFIX}: not the published file (pass expected_sha256 to "
                     f"use another one on purpose). {PUBLISHED_FILE}")


def _make_apply(variables, resize: str) -> Callable[[jax.Array], dict[str, jax.Array]]:
  network = _FIDInceptionV3()

  def features(variables, images):
    return _forward(network, variables, preprocess(images, resize))

  return jax.tree_util.Partial(jax.jit(features), variables)


def load_inception(weights_path: str, expected_sha256: str | None = None, resize: str = "tf1") -> FeatureNetwork:
  """The FID Inception network with the weights of `weights_path` (local or gs://; never downloaded).

  Accepts the published torch file (zip or legacy format, read without torch by `torch_weights`) and an .npz
  with the same keys and layouts. The file's SHA-256 must equal `expected_sha256` when given, and otherwise
  start with the published tag '6726825d'. Raises ValueError naming the file and the problem (missing file,
  wrong hash, unreadable file, missing or unexpected key, wrong shape) and saying where the published file
  comes from.
  """
  if resize not in PREPROCESS_MODES:
    raise ValueError(f"resize {resize!r} is not one of {PREPROCESS_MODES}")
  path = epath.Path(weights_path)
  if not path.exists():
    raise ValueError(f"FID Inception weights not found: {weights_path}. {PUBLISHED_FILE}")
  data = path.read_bytes()
  digest = hashlib.sha256(data).hexdigest()
  _check_hash(path, digest, expected_sha256)
  state_dict = _read_weights(path, data)
  try:
    variables = params_from_state_dict(state_dict)
  except ValueError as error:
    raise ValueError(f"FID Inception weights {path}: {error}. {PUBLISHED_FILE}") from error
  return FeatureNetwork(apply=_make_apply(variables, resize), weights_sha256=digest, resize=resize)
