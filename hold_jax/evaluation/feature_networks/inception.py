"""The published weights of the FID Inception network (hold_jax/evaluation/feature_networks/inception_network.py):
reading, checking and mapping them onto the Flax tree, and seeded random weights for tests.

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
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import math
import zipfile
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import traverse_util

from hold_jax.evaluation.feature_networks import inception_network
from hold_jax.evaluation.feature_networks import torch_weights

NETWORK_NAME = "inception-2015-12-05"
PUBLISHED_SHA256_PREFIX = "6726825d"
PUBLISHED_FILE = (
    "the published FID Inception weights are pt_inception-2015-12-05-6726825d.pth from pytorch-fid's GitHub "
    "releases (mseitzer/pytorch-fid, release 'fid_weights'), also published as "
    "weights-inception-2015-12-05-6726825d.pth in torch-fidelity's GitHub releases (toshas/torch-fidelity, "
    "v0.2.0); download one by hand and pass its path (nothing is downloaded here)")

_CALIBRATION_SIZES = (16, 32, 64, 128)  # uint8 noise images, resized to 299: smooth to rough inputs


# ----------------------------------------------------------------------------------------------------------
# Torch state_dict <-> Flax variables.

_FLOATING_DTYPES = ("float16", "bfloat16", "float32", "float64")  # what the network's parameters may arrive as
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
  size = inception_network.INPUT_SIZE
  shapes = jax.eval_shape(inception_network.FIDInceptionV3().init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  slots = {}
  for path, leaf in traverse_util.flatten_dict(shapes).items():
    collection, *modules, leaf_name = path
    key = ".".join((*modules, _TORCH_LEAF[(collection, leaf_name)]))
    slots[key] = _Slot(path, tuple(leaf.shape), _to_torch_shape(path, tuple(leaf.shape)))
  return slots


def _state_dict_problems(state_dict: dict[str, Any]) -> list[str]:
  """Missing keys, unexpected keys, wrong shapes and non-floating dtypes of `state_dict` against the network
  (num_batches_tracked is ignored: torch writes it for every batch norm, the network has no use for it). An
  integer or bool weight would be converted to float32 without a word, so it is refused instead."""
  slots = _slots()
  given = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
  problems = [f"missing key {k} (shape {slots[k].torch_shape})" for k in sorted(slots) if k not in given]
  problems += [f"unexpected key {k}" for k in sorted(given) if k not in slots]
  problems += [f"key {k} has shape {tuple(np.shape(given[k]))}, expected {slots[k].torch_shape}"
               for k in sorted(given) if k in slots and tuple(np.shape(given[k])) != slots[k].torch_shape]
  problems += [f"key {k} has dtype {np.asarray(given[k]).dtype.name}, expected a floating type "
               f"({', '.join(_FLOATING_DTYPES)})"
               for k in sorted(given) if k in slots and np.asarray(given[k]).dtype.name not in _FLOATING_DTYPES]
  return problems


def params_from_state_dict(state_dict: dict[str, np.ndarray]) -> dict[str, Any]:
  """Torch-layout {key: array} -> Flax variables {'params': ..., 'batch_stats': ...} (float32 jax arrays).

  Every key and shape must match the network exactly (num_batches_tracked ignored) and every value must be
  floating (float16, bfloat16, float32 or float64); ValueError lists what does not.
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
  network = inception_network.FIDInceptionV3(calibrate=True)
  x = jnp.concatenate([inception_network.preprocess(jnp.asarray(group), "tf1") for group in images])
  _, updates = jax.jit(lambda p, x: network.apply({"params": p}, x, mutable=["batch_stats"]))(params, x)
  return updates["batch_stats"]


def random_state_dict(seed: int) -> dict[str, np.ndarray]:
  """Seeded random weights in the torch layout and key names (float32; num_batches_tracked int64 zeros).

  For tests: convs He-normal N(0, 2 / fan_in), bn.weight ~ U(0.5, 1.5) (not ones, so that a dropped scale
  shows), bn.bias ~ 0.1 N(0, 1), fc ~ N(0, 1 / 2048) and 0.1 N(0, 1). The running statistics are then
  calibrated by one forward pass on uint8 noise images of 16, 32, 64 and 128 pixels resized to 299
  (inception_network's `calibrate`), smooth to rough inputs: without calibration activations drift until pool3
  barely differs between images, and calibrated on one input size only, pool3 of other sizes grows many-fold.
  Draws come from np.random.RandomState (whose streams numpy keeps fixed) in sorted key order, so a seed gives
  the same weights on any machine up to the float32 rounding of the calibration pass.
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
    # Floating parameters, and int64 for num_batches_tracked: anything else is refused before it is read.
    return torch_weights.read_state_dict(data, allowed_dtypes=(*_FLOATING_DTYPES, "int64"))
  except (ValueError, OSError, zipfile.BadZipFile) as error:
    raise ValueError(f"cannot read FID Inception weights {path}: {error}. {PUBLISHED_FILE}") from error


def _check_hash(path: epath.Path, digest: str, expected_sha256: str | None) -> None:
  if expected_sha256 is not None and digest != expected_sha256.strip().lower():
    raise ValueError(f"FID Inception weights {path} have SHA-256 {digest}, expected {expected_sha256}: a "
                     f"different or damaged file. {PUBLISHED_FILE}")
  if expected_sha256 is None and not digest.startswith(PUBLISHED_SHA256_PREFIX):
    raise ValueError(f"FID Inception weights {path} have SHA-256 {digest}, which does not start with the "
                     f"published tag {PUBLISHED_SHA256_PREFIX}: not the published file (to use another one on "
                     f"purpose, give its SHA-256: --inception_sha256 for python -m hold_jax.fid, "
                     f"--config.eval.inception_sha256 for --mode=eval). {PUBLISHED_FILE}")


def _make_apply(variables, resize: str) -> Callable[[jax.Array], dict[str, jax.Array]]:
  network = inception_network.FIDInceptionV3()

  def features(variables, images):
    return inception_network.forward(network, variables, inception_network.preprocess(images, resize))

  return jax.tree_util.Partial(jax.jit(features), variables)


def load_inception(weights_path: str, expected_sha256: str | None = None, resize: str = "tf1") -> FeatureNetwork:
  """The FID Inception network with the weights of `weights_path` (local or gs://; never downloaded).

  Accepts the published torch file (zip or legacy format, read without torch by `torch_weights`) and an .npz
  with the same keys and layouts. The file's SHA-256 must equal `expected_sha256` when given, and otherwise
  start with the published tag '6726825d'. Raises ValueError naming the file and the problem (missing file,
  wrong hash, unreadable file, missing or unexpected key, wrong shape) and saying where the published file
  comes from.
  """
  if resize not in inception_network.PREPROCESS_MODES:
    raise ValueError(f"resize {resize!r} is not one of {inception_network.PREPROCESS_MODES}")
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
