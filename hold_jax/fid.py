"""`python -m hold_jax.fid A B --inception_weights FILE`: FID (and KID, IS where the inputs allow) of two image
sets, printed as one JSON line; with `--feature_network=digits`, the same metrics on the bundled digits
classifier's features (fd_digits and the like of `--mode=eval`, for grey digit images; no weights file).

A and B are each one of:
- an `.npz` with uint8 `pixels` (N, H, W, C), C = 1 or 3: what `--mode=sample` writes;
- a folder of PNG files (8-bit grey or RGB, all of one size), read in name order;
- a statistics `.npz` with `mu` (D,) and `sigma` (D, D), optionally `features` (M, D) and metadata (ours from
  hold_jax.evaluation.reference_stats, or pytorch-fid's / EDM's / TTUR's).

Images go through the feature network as `--mode=eval` sends a sample's (hold_jax/evaluation/image_features.py:
batches of --batch_size, the last one padded to the same shape so a jitted network compiles once, padded rows
dropped; the Inception network takes grey images as three equal channels). Features are kept as float32 for KID
and their moments taken in float64 (statistics.FeatureStats); the logits of A are kept for IS. Output keys:
- fid; n_a, n_b (images or the statistics' recorded count; null when unknown); weights_sha256, resize
  (with --feature_network=digits the metrics are named as `--mode=eval` names them: fd_digits, kid_digits, ...);
- kid, kid_std, kid_subset_size, kid_subsets: when both sides have features (images, or statistics with
  `features`); torch-fidelity's estimator and defaults (statistics.kid);
- is, is_std, is_splits, is_logits: when A is images; 10 contiguous splits (statistics.inception_score), from
  the Inception network's 'logits_unbiased' (the standard IS; is_logits names the output used).

Statistics that record another network (weights SHA-256) or resize than the one used here are refused
(reference_stats.check_compatible). Bad input ends with one line on stderr and exit status 1 (2 for a bad
command line), no traceback. main(argv, network=...) takes an image_features.Network in place of the one the
flags name, so tests need no Inception weights.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
from absl import logging
from etils import epath

from hold_jax.data import npz_files
from hold_jax.evaluation import reference_stats
from hold_jax.evaluation import statistics

if TYPE_CHECKING:  # imported where used: JAX loads only after the command line and inputs are checked
  from hold_jax.evaluation import image_features

RESIZE_MODES = ("tf1", "half_pixel")
FEATURE_NETWORKS = ("inception", "digits")  # image_features.FEATURE_NETWORKS, known before JAX is imported


class UsageError(ValueError):
  """A bad command line (exit status 2)."""


# ----------------------------------------------------------------------------------------------------------
# Inputs.


def check_pixels(pixels: np.ndarray, what: str) -> np.ndarray:
  """pixels as given when they are uint8 (N, H, W, C) with C in (1, 3) and N >= 1; ValueError otherwise."""
  if pixels.dtype != np.uint8:
    raise ValueError(f"{what}: pixels are {pixels.dtype}; FID takes uint8 images (N, H, W, C) in 0..255.")
  if pixels.ndim != 4 or pixels.shape[-1] not in (1, 3) or pixels.shape[0] == 0:
    raise ValueError(f"{what}: pixels have shape {pixels.shape}; FID takes images (N, H, W, C), N >= 1, C = 1 or 3.")
  return pixels


def read_png(path: epath.Path) -> np.ndarray:
  """One PNG as uint8 (H, W, C), C = 1 (mode L) or 3 (RGB); ValueError for other modes or unreadable files."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with path.open("rb") as file, Image.open(file) as image:
      mode = image.mode
      pixels = np.asarray(image) if mode in ("L", "RGB") else None
  except (OSError, SyntaxError, ValueError) as error:  # PIL raises these for files it cannot decode
    raise ValueError(f"{path} is not a readable PNG ({error}).") from None
  if pixels is None:
    raise ValueError(f"{path} has PIL mode {mode}; FID takes 8-bit grey (L) or RGB PNGs.")
  return pixels[..., None] if pixels.ndim == 2 else pixels


@dataclasses.dataclass
class NpzImages:
  """The uint8 images (N, H, W, C) of an .npz, held in memory."""
  pixels: np.ndarray

  def __len__(self) -> int:
    return self.pixels.shape[0]

  def batches(self, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(self), size):
      yield self.pixels[start:start + size]


@dataclasses.dataclass
class PngFolder:
  """The PNG files of a folder in name order, read batch by batch (never all at once); all of one shape."""
  files: list[epath.Path]
  shape: tuple[int, ...]  # (H, W, C) of the first file

  def __len__(self) -> int:
    return len(self.files)

  def batches(self, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(self), size):
      images = [read_png(path) for path in self.files[start:start + size]]
      for path, image in zip(self.files[start:start + size], images):
        if image.shape != self.shape:
          raise ValueError(f"{path} is {image.shape} (H, W, C) but {self.files[0]} is {self.shape}: the PNGs of a "
                           "folder must all have one size and channel count.")
      yield np.stack(images)


@dataclasses.dataclass
class Input:
  """One side of the comparison: images (NpzImages or PngFolder) or reference statistics (a dict of
  reference_stats.load_user_stats), never both."""
  path: str
  images: Any = None
  reference: dict | None = None


def open_input(path: str) -> Input:
  """The Input at `path`: a PNG folder, an .npz with `pixels`, or an .npz with `mu` and `sigma`."""
  location = epath.Path(path)
  if location.is_dir():
    files = sorted(child for child in location.iterdir() if child.name.lower().endswith(".png"))
    if not files:
      raise ValueError(f"{path} is a folder without PNG files; give a folder of .png images, an .npz with uint8 "
                       "'pixels', or a statistics .npz with 'mu' and 'sigma'.")
    return Input(path, images=PngFolder(files, read_png(files[0]).shape))
  if not location.exists():
    raise ValueError(f"{path} does not exist; give a folder of .png images, an .npz with uint8 'pixels', or a "
                     "statistics .npz with 'mu' and 'sigma'.")
  arrays = npz_files.read_npz(location, lambda names: ["pixels"] if "pixels" in names else names)
  if "pixels" in arrays:
    return Input(path, images=NpzImages(check_pixels(arrays["pixels"], path)))
  if "mu" in arrays or "sigma" in arrays:
    return Input(path, reference=reference_stats.as_reference(arrays, path))
  raise ValueError(f"{path} has neither 'pixels' (uint8 images) nor 'mu' and 'sigma' (statistics); its keys: "
                   f"{sorted(arrays)}.")


# ----------------------------------------------------------------------------------------------------------
# Features.


def extract(network: image_features.Network, images, batch_size: int) -> dict[str, Any]:
  """{'stats': FeatureStats, 'features': (N, D) float32, 'logits': (N, K) float32} of the images, computed as
  `--mode=eval` computes a sample's (image_features.FeatureStream: batches of one size, the last one padded
  with copies of its last image and cut back; grey images as the network takes them)."""
  from hold_jax.evaluation import image_features  # pylint: disable=g-import-not-at-top  (JAX: errors come first)
  stream = image_features.FeatureStream(network, min(batch_size, len(images)))
  for batch in images.batches(batch_size):
    stream.add(batch)
  features, logits = stream.finish()
  stats = statistics.FeatureStats(features.shape[1])
  stats.add(features)
  return {"stats": stats, "features": features, "logits": logits}


def side(network: image_features.Network, given: Input, batch_size: int, keep_logits: bool) -> dict[str, Any]:
  """{'mu', 'sigma', 'features' (or None), 'n' (or None), 'logits' (or None), 'logits_key'} of one input."""
  if given.reference is not None:
    return {**given.reference, "logits": None, "logits_key": None}
  out = extract(network, given.images, batch_size)
  if out["stats"].n < 2:
    raise ValueError(f"{given.path} has {out['stats'].n} image; FID needs at least 2 (and tens of thousands for "
                     "numbers comparable with papers).")
  return {"mu": out["stats"].mean(), "sigma": out["stats"].covariance(), "features": out["features"],
          "n": out["stats"].n, "logits": out["logits"] if keep_logits else None,
          "logits_key": network.logits_key if keep_logits else None}


def compare(network: image_features.Network, a: Input, b: Input, batch_size: int = 100,
            kid_subset_size: int = statistics.KID_SUBSET_SIZE) -> dict[str, Any]:
  """The metrics of A against B as one flat dict (the CLI's JSON line)."""
  sha, resize = network.weights_sha256, network.resize
  for given in (a, b):
    if given.reference is not None:
      reference_stats.check_compatible(given.reference["metadata"], sha, resize, f"The statistics {given.path}")
  first, second = side(network, a, batch_size, keep_logits=True), side(network, b, batch_size, keep_logits=False)
  if first["mu"].shape != second["mu"].shape:
    raise ValueError(f"{a.path} has {first['mu'].shape[0]}-dim features and {b.path} {second['mu'].shape[0]}-dim "
                     "ones: statistics of another feature layer or network.")
  for given, got in ((a, first), (b, second)):
    if got["n"] is not None and got["n"] < got["mu"].shape[0]:
      logging.warning("%s: %d images for %d-dim features: the covariance is singular and FID strongly biased; "
                      "compare FIDs only at equal sample sizes.", given.path, got["n"], got["mu"].shape[0])
  name = network.metric_name  # 'fid' on Inception, 'fd_digits' on the digits classifier, as --mode=eval
  result = {name("fid"): statistics.frechet_distance(first["mu"], first["sigma"], second["mu"], second["sigma"])}
  if first["features"] is not None and second["features"] is not None:
    n_a, n_b = len(first["features"]), len(second["features"])
    if min(n_a, n_b, kid_subset_size) >= 2:
      mean, std = statistics.kid(first["features"], second["features"], subset_size=kid_subset_size)
      result.update({name("kid"): mean, name("kid") + "_std": std,
                     "kid_subset_size": statistics.kid_subset_size(n_a, n_b, kid_subset_size),
                     "kid_subsets": statistics.KID_SUBSETS})
  if first["logits"] is not None and len(first["logits"]) >= statistics.IS_SPLITS:
    mean, std = statistics.inception_score(first["logits"])
    result.update({name("is"): mean, name("is") + "_std": std, "is_splits": statistics.IS_SPLITS,
                   "is_logits": first["logits_key"]})
  elif first["logits"] is not None:
    logging.warning("IS skipped: %d images of A, fewer than its %d splits.", len(first["logits"]), statistics.IS_SPLITS)
  result.update(n_a=first["n"], n_b=second["n"], weights_sha256=sha, resize=resize)
  return result


# ----------------------------------------------------------------------------------------------------------
# Command line.


class _Parser(argparse.ArgumentParser):
  """argparse whose errors raise UsageError (one line from main) instead of printing usage and exiting."""

  def error(self, message):
    raise UsageError(message)


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = _Parser(prog="python -m hold_jax.fid", description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("a", help="images (.npz with uint8 pixels, or a PNG folder): the samples")
  parser.add_argument("b", help="images or a statistics .npz (mu, sigma[, features]): the reference")
  parser.add_argument("--feature_network", default="inception", choices=FEATURE_NETWORKS,
                      help="inception (FID, KID, IS as papers report them) or digits (the bundled classifier of "
                      "8x8 digits: fd_digits and the like, for grey digit images)")
  parser.add_argument("--inception_weights", help="the FID Inception weights file (e.g. pt_inception-2015-12-05-"
                      "6726825d.pth)")
  parser.add_argument("--inception_sha256", default=None, help="expected SHA-256 of the weights file (hex)")
  parser.add_argument("--resize", default="tf1", choices=RESIZE_MODES,
                      help="resize to 299: tf1 (TF graph, torch-fidelity, EDM) or half_pixel (pytorch-fid)")
  parser.add_argument("--batch_size", type=int, default=100, help="images per network call")
  parser.add_argument("--kid_subset_size", type=int, default=statistics.KID_SUBSET_SIZE,
                      help="KID subset size, capped by the smaller sample")
  args = parser.parse_args(argv)
  if args.batch_size < 1:
    raise UsageError(f"--batch_size must be positive; got {args.batch_size}.")
  if args.kid_subset_size < 2:
    raise UsageError(f"--kid_subset_size must be at least 2; got {args.kid_subset_size}.")
  return args


def load_network(args: argparse.Namespace) -> image_features.Network:
  """The feature network of --feature_network: the FID Inception (--inception_weights, --resize) or the bundled
  digits classifier, loaded as `--mode=eval` loads them (hold_jax/evaluation/image_features.py)."""
  from hold_jax.evaluation import image_features  # pylint: disable=g-import-not-at-top  (JAX: errors come first)
  if args.feature_network == "digits":
    return image_features.load_digits()
  if args.inception_weights is None:
    raise UsageError("--inception_weights FILE is required: the FID Inception network's weights file "
                     "(or --feature_network=digits for the bundled digits classifier).")
  return image_features.load_inception(args.inception_weights, args.inception_sha256, args.resize,
                                       field="--inception_weights", flag="--inception_weights")


def main(argv: list[str] | None = None, network=None) -> int:
  """Runs the command; returns the exit status. `network` replaces the one --inception_weights would load."""
  try:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    a, b = open_input(args.a), open_input(args.b)  # every input checked before any network work
    if network is None:
      network = load_network(args)
    print(json.dumps(compare(network, a, b, args.batch_size, args.kid_subset_size)), flush=True)
    return 0
  except (ValueError, OSError, ImportError) as error:
    message = " ".join(str(error).split())  # one line, whatever the message
    print(f"hold_jax.fid: error: {message}", file=sys.stderr)
    return 2 if isinstance(error, UsageError) else 1


if __name__ == "__main__":
  sys.exit(main())
