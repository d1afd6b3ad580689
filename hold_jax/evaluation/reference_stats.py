"""Reference statistics of a data set: computed once per (data set, split, size, network, resize) and cached.

A reference file holds `mu` (D,) and `sigma` (D, D) float64 (the FID side), `features` (M, D) float32 (the KID
side; M may be a subset of the images), `n` (the number of images behind mu and sigma) and metadata strings,
among them `weights_sha256` and `resize`. Those two name the feature extractor: statistics of one extractor
compared with features of another give a wrong FID without any error (docs/evaluation.md: pytorch-fid
features against TTUR statistics read 15 instead of single digits), so check_compatible refuses the mix
whenever the metadata says what made the file. A user's file with only `mu` and `sigma` (pytorch-fid, EDM's
fid-refs, TTUR, clean-fid all write that) cannot be checked: it is accepted with a warning.
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Callable

import numpy as np
from absl import logging
from etils import epath

from hold_jax.data import npz_files
from hold_jax.evaluation import statistics

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _safe(text: str) -> str:
  """`text` with every run of characters outside [A-Za-z0-9._-] replaced by one '_' (never empty)."""
  return _UNSAFE.sub("_", text).strip("_") or "_"


def reference_key(dataset: str, split: str, num_images: int | None, weights_sha256: str, resize: str) -> str:
  """A file-name-safe key of a reference, e.g. 'cifar10-train-n50000-tf1-w6726825d0a1b-3f2a9c1e'.

  Readable part: data set, split, number of images ('all' for None), resize and the first 12 hex digits of the
  weights' SHA-256. The last 8 hex digits hash all five fields as given, so names that the character cleaning
  maps to the same text ('a/b' and 'a_b') still get different keys.
  """
  sha = weights_sha256.lower()
  fields = [dataset, split, num_images, sha, resize]
  digest = hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:8]
  count = "all" if num_images is None else str(int(num_images))
  return "-".join([_safe(dataset), _safe(split), f"n{count}", _safe(resize), f"w{_safe(sha)[:12]}", digest])


def as_reference(arrays: dict[str, np.ndarray], what: str) -> dict[str, Any]:
  """{'mu', 'sigma', 'features' (or None), 'n' (or None), 'metadata'} of a statistics .npz's arrays."""
  missing = [key for key in ("mu", "sigma") if key not in arrays]
  if missing:
    raise ValueError(f"{what} has no {' or '.join(missing)}: a statistics .npz holds 'mu' (D,) and 'sigma' (D, D) "
                     f"(its keys: {sorted(arrays)}).")
  mu, sigma = arrays["mu"].astype(np.float64), arrays["sigma"].astype(np.float64)
  statistics.check_gaussian(mu, sigma, what)
  features = arrays.get("features")
  if features is not None:
    if features.ndim != 2 or features.shape[1] != mu.shape[0]:
      raise ValueError(f"{what}: features must be (M, {mu.shape[0]}); got shape {features.shape}.")
    features = features.astype(np.float32)
  n = int(arrays["n"]) if "n" in arrays and arrays["n"].ndim == 0 else None
  return {"mu": mu, "sigma": sigma, "features": features, "n": n, "metadata": npz_files.metadata_of(arrays)}


def load_user_stats(path) -> dict[str, Any]:
  """A statistics .npz from anywhere: `mu` and `sigma` required (pytorch-fid, EDM, TTUR, clean-fid, ours);
  `features`, `n` and metadata strings used when present. Returns the dict of load_or_compute."""
  return as_reference(npz_files.read_npz(path), str(path))


def load_or_compute(cache_dir, key: str, compute_fn: Callable[[], dict], write: bool = True) -> dict[str, Any]:
  """The cached reference `cache_dir/<key>.npz`, or compute_fn() written there first (atomically) when `write`
  (in a multi-process job, process 0 alone writes: the others compute the same statistics).

  compute_fn() -> {'mu' (D,), 'sigma' (D, D), optional 'features' (M, D), 'n' (int), 'metadata' (dict)}.
  Returns {'mu', 'sigma' float64, 'features' float32 or None, 'n' int or None, 'metadata' dict of strings};
  a fresh result comes back exactly as a later load will read it. A cache file that is damaged or lacks mu
  and sigma is an error naming the file (remove it to recompute), never silently recomputed over.
  """
  if _safe(key) != key:
    raise ValueError(f"Reference key {key!r} is not file-name safe; make it with reference_key().")
  path = epath.Path(cache_dir) / f"{key}.npz"
  if path.exists():
    logging.info("Reference statistics from the cache %s.", path)
    try:
      return load_user_stats(path)
    except ValueError as error:
      raise ValueError(f"{error} Remove the cached file {path} to compute it again.") from None
  result = compute_fn()
  arrays = {"mu": np.asarray(result["mu"], np.float64), "sigma": np.asarray(result["sigma"], np.float64)}
  if result.get("features") is not None:
    arrays["features"] = np.asarray(result["features"], np.float32)
  if result.get("n") is not None:
    arrays["n"] = np.asarray(int(result["n"]), np.int64)
  arrays.update(npz_files.metadata_arrays({"key": key, **result.get("metadata", {})}))
  reference = as_reference(arrays, f"computed reference {key}")  # checks shapes before anything is written
  if write:
    npz_files.write_npz_atomic(path, arrays)
    logging.info("Reference statistics written to %s.", path)
  return reference


def check_compatible(stats_metadata: dict, weights_sha256: str, resize: str, what: str = "The statistics") -> None:
  """ValueError when the metadata names another network (weights_sha256) or another resize than the ones
  given; a logged warning when it names neither (a bare mu/sigma file), since then nothing can be checked."""
  recorded_sha, recorded_resize = stats_metadata.get("weights_sha256"), stats_metadata.get("resize")
  if recorded_sha is None and recorded_resize is None:
    logging.warning("%s carry no record of the network or resize that made them: they cannot be checked against "
                    "weights %s with resize %s. Statistics of another extractor give a wrong FID.", what,
                    weights_sha256, resize)
    return
  if recorded_sha is not None and recorded_sha.lower() != weights_sha256.lower():
    raise ValueError(f"{what} were computed with Inception weights of SHA-256 {recorded_sha}, but the features here "
                     f"come from weights {weights_sha256}: FID across networks is meaningless. Use the same "
                     "weights file, or recompute the statistics.")
  if recorded_resize is not None and recorded_resize != resize:
    raise ValueError(f"{what} were computed with resize {recorded_resize!r}, but the features here use resize "
                     f"{resize!r}: the resize moves FID substantially. Pass --resize={recorded_resize} or recompute "
                     "the statistics.")
