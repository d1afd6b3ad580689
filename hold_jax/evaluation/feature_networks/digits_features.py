"""A small classifier of scikit-learn's 8x8 digits whose penultimate features measure digits samples.

FID needs the Inception weights, which cannot be downloaded here, and was never meant for 8x8 grey images
anyway. This network plays its part for the digits: a Fréchet distance and KID over its 64
penultimate features, an IS over its 10 logits (hold_jax/evaluation/image_quality.py reports them as fd_digits,
kid_digits and is_digits). Its numbers are comparable only with each other, computed with the same weights file (record
weights_sha256 next to them), never with published FIDs.

The network. An MLP 64 -> 128 -> 64 -> 10 with swish activations (17,226 float32 parameters, 70 KB): on 8x8
images it classifies nearly all held-out digits (tests/test_digits_features.py), and it is cheap enough to train
in seconds on a CPU. Swish rather than
ReLU because a dead ReLU unit is a constant feature, which makes the feature covariance singular. A
convolutional network would be more shift-tolerant, but a digit moved by one of its 8 pixels is a visibly
worse sample, and the MLP's features see that (tests/test_digits_features.py).

Inputs are what a sample becomes on disk: uint8 pixels (N, H, W, 1) from image_data.to_pixels. The digits'
17 levels k = 0..16 map to model space as 2 k / 16 - 1 and back to pixels rint(k 255 / 16) = 0, 16, 32, ...,
128, 143, ..., 255; digits_pixels makes the training images exactly that way, so training data and samples
share one pixel scale. The network reads pixel / 255. Images larger than 8x8 (data.image_size = 16) are
reduced to 8x8 by averaging whole blocks: H and W must be multiples of 8, and a (H/8) x (W/8) block becomes one
pixel. A digit upsampled by repeating each pixel therefore gives exactly its 8x8 features. The data pipeline's
16x16 digits are upsampled smoothly instead (image_data.resize), which after block-averaging is a mild blur of
the original (the held-out digits at 16 and at 8 are further apart in Fréchet distance than the train and
held-out digits at 8), so a 16x16 model is compared against digits_pixels(split, image_size=16), never the raw
8x8 images.

The split. The 1,797 digits in a fixed order (np.random.default_rng(SPLIT_SEED).permutation): the first 1,500
train the classifier, the other 297 are held out from it (the diffusion model trains on all 1,797).

Training is deterministic: the 1,500 images as one full batch, optax adam for a fixed number of steps from a
seeded initialisation, in float32 with x64 switched off whatever the caller's setting (optax computes adam's
bias correction in the default float type). On one machine it gives the same bytes every time. XLA CPU,
though, emits code for the host's instruction set, with fused multiply-adds or without, which rounds float32
sums differently (XLA_FLAGS=--xla_cpu_max_isa=AVX changes the bytes), so on another CPU a retrained file matches
the committed one to float32 rounding of each array's scale, with the same predictions, rather than bit for bit. The
committed weights file is made by

  python -m hold_jax.evaluation.feature_networks.digits_features \
      --write hold_jax/evaluation/feature_networks/digits_classifier.npz

in seconds on a CPU, mostly imports, data and compilation rather than the 500 steps. The file is an
uncompressed .npz whose zip entries carry a fixed date, so its SHA-256 is a function of the weights alone.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import io
import os
import time
import zipfile
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hold_jax.data import image_data
from hold_jax.data import image_sources

NAME = "digits-classifier-v1"
RESIZE = "block-mean to 8x8"
DEFAULT_WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits_classifier.npz")

SPLIT_SEED = 0  # the fixed permutation of the 1,797 digits
NUM_TRAIN = 1500  # the first NUM_TRAIN of the permutation train the classifier; the rest are held out
SPLITS = ("train", "heldout")
SIDE = 8  # the classifier's input is SIDE x SIDE x 1
NUM_LEVELS = image_sources.SOURCES["digits"].num_levels  # 17
HIDDEN = 128
NUM_FEATURES = 64
NUM_CLASSES = 10
NUM_STEPS = 500
LEARNING_RATE = 3e-3
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip entry can carry


# ----------------------------------------------------------------------------------------------------------
# The fixed split, as the data pipeline's pixels.


@functools.lru_cache(maxsize=1)
def _permuted_digits() -> tuple[np.ndarray, np.ndarray]:
  """All 1,797 digits in the fixed order: levels (1797, 8, 8, 1) uint8 in 0..16 and labels (1797,) int32."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top  (only the digits need it)
  digits = datasets.load_digits()
  order = np.random.default_rng(SPLIT_SEED).permutation(len(digits.images))
  levels = digits.images.astype(np.uint8)[order][..., None]
  labels = digits.target.astype(np.int32)[order]
  levels.setflags(write=False)
  labels.setflags(write=False)
  return levels, labels


def _split_slice(split: str) -> slice:
  if split not in SPLITS:
    raise ValueError(f"digits split {split!r} is not one of {SPLITS} (the first {NUM_TRAIN} of the fixed "
                     "permutation train the classifier, the rest are held out).")
  return slice(None, NUM_TRAIN) if split == "train" else slice(NUM_TRAIN, None)


def digits_pixels(split: str, image_size: int = SIDE) -> np.ndarray:
  """The digits of `split` as the data pipeline's pixels: uint8 (N, image_size, image_size, 1).

  N is 1,500 for 'train' and 297 for 'heldout'. The levels are resized as the pipeline resizes them for
  data.image_size (image_data.resize_levels, not at all for 8) and mapped to pixels through model space,
  exactly as a sample is (image_data.to_pixels).
  """
  levels = _permuted_digits()[0][_split_slice(split)]
  if image_size != SIDE:
    levels = image_data.resize_levels(levels, image_size, NUM_LEVELS)
  return image_data.to_pixels(image_data.to_model_space(levels, NUM_LEVELS))


def digits_labels(split: str) -> np.ndarray:
  """The classes (N,) int32 in 0..9 of the digits of `split`, in digits_pixels' order."""
  return np.array(_permuted_digits()[1][_split_slice(split)])


# ----------------------------------------------------------------------------------------------------------
# The network.


def network_input(images) -> jax.Array:
  """uint8 pixels (N, H, W, 1), H and W multiples of 8 -> float32 (N, 8, 8, 1) in [0, 1], block-averaged.

  Checked while tracing, so a jitted caller fails before any compute: model-space floats passed by mistake
  would otherwise give confident features of the wrong images.
  """
  if images.dtype != jnp.uint8:
    raise ValueError(f"the digits classifier takes uint8 pixels, got dtype {images.dtype}: pass "
                     "image_data.to_pixels(samples), not model-space samples.")
  if images.ndim != 4 or images.shape[3] != 1 or images.shape[1] % SIDE or images.shape[2] % SIDE:
    raise ValueError(f"the digits classifier takes images (N, H, W, 1) with H and W multiples of {SIDE}, got "
                     f"shape {tuple(images.shape)}.")
  n, height, width, _ = images.shape
  blocks = jnp.asarray(images, jnp.float32).reshape(n, SIDE, height // SIDE, SIDE, width // SIDE, 1)
  return blocks.mean(axis=(2, 4)) * jnp.float32(1 / 255)


class DigitsClassifier(nn.Module):
  """(N, 8, 8, 1) float32 in [0, 1] -> {'features': (N, 64), 'logits': (N, 10)}, both float32."""

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    x = x.reshape(x.shape[0], -1)
    x = nn.swish(nn.Dense(HIDDEN, name="hidden")(x))
    features = nn.swish(nn.Dense(NUM_FEATURES, name="features")(x))
    return {"features": features, "logits": nn.Dense(NUM_CLASSES, name="logits")(features)}


MODEL = DigitsClassifier()


def _outputs(params, images: jax.Array) -> dict[str, jax.Array]:
  return MODEL.apply({"params": params}, network_input(images))


_jitted_outputs = jax.jit(_outputs)


# ----------------------------------------------------------------------------------------------------------
# Training.


def _loss(params, inputs: jax.Array, labels: jax.Array) -> jax.Array:
  logits = MODEL.apply({"params": params}, inputs)["logits"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@functools.partial(jax.jit, static_argnames="num_steps")
def _fit(params, inputs: jax.Array, labels: jax.Array, num_steps: int):
  """num_steps full-batch adam steps from `params` on inputs (N, 8, 8, 1) float32 and labels (N,) int32."""
  optimizer = optax.adam(LEARNING_RATE)

  def step(_, carry):
    params, opt_state = carry
    grads = jax.grad(_loss)(params, inputs, labels)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return jax.lax.fori_loop(0, num_steps, step, (params, optimizer.init(params)))[0]


def train_digits_classifier(seed: int = 0, num_steps: int = NUM_STEPS) -> dict:
  """The classifier's parameters (nested dict of float32 numpy arrays), trained on the 'train' split.

  A pure function of (seed, num_steps) on one machine: seed draws the initialisation, and there is no data order
  to draw (full batch). x64 is off inside, so the caller's jax_enable_x64 changes nothing.
  """
  with jax.enable_x64(False):
    images = jnp.asarray(digits_pixels("train"))
    inputs = jax.jit(network_input)(images)
    params = MODEL.init(jax.random.key(seed), inputs[:1])["params"]
    params = _fit(params, inputs, jnp.asarray(digits_labels("train")), num_steps)
  return jax.tree.map(lambda leaf: np.asarray(leaf, np.float32), jax.device_get(params))


# ----------------------------------------------------------------------------------------------------------
# The weights file.


def _flat(params: dict, prefix: str = "") -> dict:
  """{'hidden/kernel': leaf, ...} of a nested parameter dict."""
  flat = {}
  for key, value in params.items():
    name = f"{prefix}{key}"
    flat.update(_flat(value, name + "/") if isinstance(value, dict) else {name: value})
  return flat


def _nested(flat: dict[str, np.ndarray]) -> dict:
  params = {}
  for name, array in flat.items():
    *parents, leaf = name.split("/")
    node = params
    for parent in parents:
      node = node.setdefault(parent, {})
    node[leaf] = array
  return params


def expected_shapes() -> dict[str, tuple[int, ...]]:
  """{'hidden/kernel': (64, 128), ...}: the arrays a weights file must hold, from the model itself."""
  shapes = jax.eval_shape(MODEL.init, jax.random.key(0), jax.ShapeDtypeStruct((1, SIDE, SIDE, 1), jnp.float32))
  return {name: tuple(leaf.shape) for name, leaf in _flat(shapes["params"]).items()}


def weights_bytes(params: dict) -> bytes:
  """The weights file's bytes: an uncompressed .npz of little-endian float32 arrays named 'hidden/kernel' etc.

  np.savez stamps every entry with the current time; here entries are sorted and carry ZIP_DATE, so equal
  weights give equal bytes and the SHA-256 names the weights, not the moment they were written.
  """
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
    for name, array in sorted(_flat(params).items()):
      entry = io.BytesIO()
      np.lib.format.write_array(entry, np.ascontiguousarray(array, "<f4"), version=(1, 0), allow_pickle=False)
      info = zipfile.ZipInfo(name + ".npy", date_time=ZIP_DATE)
      info.create_system = 3  # what a Unix host writes, so the bytes do not depend on the OS either
      archive.writestr(info, entry.getvalue())
  return buffer.getvalue()


def save_weights(params: dict, path: str) -> str:
  """Writes `params` to `path` (weights_bytes) through a temporary file and a rename; returns its SHA-256."""
  data = weights_bytes(params)
  temporary = f"{path}.tmp-{os.getpid()}"
  with open(temporary, "wb") as file:
    file.write(data)
  os.replace(temporary, path)
  return hashlib.sha256(data).hexdigest()


def read_weights(data: bytes, path: str) -> dict:
  """The nested float32 parameters of a weights file's bytes, checked against expected_shapes."""
  try:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
      flat = {name: npz[name] for name in npz.files}
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
    raise ValueError(f"digits classifier weights {path} are not a readable .npz ({error}). Rewrite them with "
                     "`python -m hold_jax.evaluation.feature_networks.digits_features --write PATH`.") from None
  shapes = {name: array.shape for name, array in flat.items()}
  if shapes != expected_shapes() or any(array.dtype != np.float32 for array in flat.values()):
    raise ValueError(f"digits classifier weights {path} hold {shapes}, expected float32 {expected_shapes()}: "
                     "a file of another network version.")
  return _nested(flat)


# ----------------------------------------------------------------------------------------------------------
# Loading.


@dataclasses.dataclass(frozen=True)
class DigitsFeatures:
  """The loaded classifier, shaped like inception.FeatureNetwork.

  Attributes:
    apply: uint8 images (N, H, W, 1), H and W multiples of 8 -> {'features': (N, 64) float32 (penultimate,
      after its swish), 'logits': (N, 10) float32}. Jitted (one compilation per input shape), the weights an
      argument rather than constants: a jax.tree_util.Partial, so it can be passed into a jitted function.
    weights_sha256: SHA-256 of the weights file, to record next to every number computed with it.
    name: 'digits-classifier-v1'.
    resize: 'block-mean to 8x8'.
  """
  apply: Callable[[jax.Array], dict[str, jax.Array]]
  weights_sha256: str
  name: str = NAME
  resize: str = RESIZE


def load_digits_features(weights_path: str | None = None) -> DigitsFeatures:
  """The classifier with the weights of `weights_path` (default: the committed digits_classifier.npz)."""
  path = weights_path or DEFAULT_WEIGHTS
  if not os.path.isfile(path):
    raise ValueError(f"digits classifier weights not found: {path}. Write them with "
                     f"`python -m hold_jax.evaluation.feature_networks.digits_features --write {path}`.")
  with open(path, "rb") as file:
    data = file.read()
  params = jax.tree.map(jnp.asarray, read_weights(data, path))
  return DigitsFeatures(jax.tree_util.Partial(_jitted_outputs, params), hashlib.sha256(data).hexdigest())


def accuracy(network: DigitsFeatures, split: str = "heldout") -> float:
  """The fraction of the digits of `split` whose largest logit is their class."""
  logits = np.asarray(network.apply(digits_pixels(split))["logits"])
  return float(np.mean(logits.argmax(axis=1) == digits_labels(split)))


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--write", required=True, metavar="PATH", help="where to write the trained weights (.npz)")
  parser.add_argument("--seed", type=int, default=0, help="the initialisation seed (the committed file: 0)")
  args = parser.parse_args(argv)
  start = time.perf_counter()
  params = train_digits_classifier(args.seed)
  seconds = time.perf_counter() - start
  digest = save_weights(params, args.write)
  network = load_digits_features(args.write)
  print(f"{args.write}: {os.path.getsize(args.write)} bytes, SHA-256 {digest}; trained in {seconds:.1f} s "
        f"(compilation included); held-out accuracy {accuracy(network):.4f}, train {accuracy(network, 'train'):.4f}")


if __name__ == "__main__":
  main()
