"""Makes the Inception and torch-reader fixtures in tests/fixtures/ (run by hand; tests only read the output).

The reference is torch-fidelity's pure-torch FID Inception (FeatureExtractorInceptionV3, with its own TF1
bilinear resize), which torch-fidelity validates against the TF graph. The real weights cannot be had here,
so both networks get the same seeded random weights, `inception.random_state_dict(SEED)`: the fixture keeps
only the seed, the uint8 images and torch-fidelity's pool3 and logits (~70 kB), and the test regenerates the
weights. Torch is never a dependency of the repository: this script runs in the repository's virtualenv and
hands the torch work to a second interpreter, a side virtualenv made with

  python3 -m venv /tmp/torchenv
  /tmp/torchenv/bin/pip install torch==2.13.0+cpu numpy    # from the CPU wheel index or a local wheel
  /tmp/torchenv/bin/pip install --no-deps torch-fidelity==0.4.0

and then

  .venv/bin/python tests/make_inception_fixture.py --torch-python /tmp/torchenv/bin/python

torch-fidelity's package __init__ imports torchvision (unusable next to torch 2.13.0+cpu), but its Inception module needs only torch: it is imported through a stub namespace package.

Files written:
  inception_torch_fidelity.npz: seed; images_a (2, 32, 32, 3), images_b (1, 64, 64, 1) grey, images_c
    (1, 48, 40, 3), all uint8; pool3 (4, 2048), logits_unbiased and logits (4, 1008), float32, in that
    image order.
  torch_reader_zip.pth / torch_reader_legacy.pth: one small state_dict saved by torch.save in its zip and its
    legacy (pre-1.6) format: float32, float16 and int64 tensors, and a strided view sharing a storage.
  torch_reader_expected.npz: the same tensors as numpy arrays.
  torch_reader_malicious.pth / torch_reader_malicious_legacy.pth: state_dicts holding an object whose pickle
    calls os.system('touch hold_jax_inception_pwned') (the pickle names it posix.system on Linux).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

SEED = 20260
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
IMAGE_GROUPS = {"images_a": (2, 32, 32, 3), "images_b": (1, 64, 64, 1), "images_c": (1, 48, 40, 3)}
PWNED = "hold_jax_inception_pwned"


# ----------------------------------------------------------------------------------------------------------
# Side 1: the repository's virtualenv (jax, no torch).


def make_images(seed: int) -> dict[str, np.ndarray]:
  rng = np.random.RandomState(seed + 1)
  return {name: rng.randint(0, 256, size=shape).astype(np.uint8) for name, shape in IMAGE_GROUPS.items()}


def main_side(torch_python: str) -> None:
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from hold_jax.evaluation.feature_networks import inception  # pylint: disable=g-import-not-at-top
  os.makedirs(FIXTURES, exist_ok=True)
  with tempfile.TemporaryDirectory() as scratch:
    np.savez(os.path.join(scratch, "weights.npz"), **inception.random_state_dict(SEED))
    images = make_images(SEED)
    np.savez(os.path.join(scratch, "images.npz"), **images)
    subprocess.run([torch_python, os.path.abspath(__file__), "--torch-side", scratch], check=True)
    with np.load(os.path.join(scratch, "features.npz")) as features:
      np.savez(os.path.join(FIXTURES, "inception_torch_fidelity.npz"), seed=np.int64(SEED), **images,
               **{key: features[key] for key in features.files})
  print("wrote", sorted(os.listdir(FIXTURES)))


# ----------------------------------------------------------------------------------------------------------
# Side 2: the torch virtualenv (torch + torch-fidelity, no jax).


def import_torch_fidelity_inception():
  """torch_fidelity.feature_extractor_inceptionv3 without running the package __init__ (torchvision)."""
  import importlib  # pylint: disable=g-import-not-at-top
  import importlib.util  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  location = importlib.util.find_spec("torch_fidelity").submodule_search_locations
  stub = types.ModuleType("torch_fidelity")
  stub.__path__ = list(location)
  sys.modules["torch_fidelity"] = stub
  return importlib.import_module("torch_fidelity.feature_extractor_inceptionv3")


def torch_features(scratch: str) -> None:
  import torch  # pylint: disable=g-import-not-at-top
  module = import_torch_fidelity_inception()
  with np.load(os.path.join(scratch, "weights.npz")) as weights:
    state_dict = {key: torch.from_numpy(weights[key]) for key in weights.files}
  weights_path = os.path.join(scratch, "weights.pth")
  torch.save(state_dict, weights_path)
  network = module.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased", "logits"],
                                               feature_extractor_weights_path=weights_path)  # strict load
  outputs = {"pool3": [], "logits_unbiased": [], "logits": []}
  with np.load(os.path.join(scratch, "images.npz")) as images, torch.no_grad():
    for name in IMAGE_GROUPS:
      x = torch.from_numpy(images[name]).permute(0, 3, 1, 2)
      x = x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x
      for key, value in zip(outputs, network(x.contiguous())):
        outputs[key].append(value.numpy())
  np.savez(os.path.join(scratch, "features.npz"), **{key: np.concatenate(v) for key, v in outputs.items()})


class _Evil:
  """Pickles as a call of os.system: a reader that runs pickled code would create the file PWNED."""

  def __reduce__(self):
    return (os.system, (f"touch {PWNED}",))


def torch_reader_files() -> None:
  import torch  # pylint: disable=g-import-not-at-top
  generator = torch.Generator().manual_seed(SEED)
  base = torch.randn(6, 8, generator=generator)
  state_dict = {
      "conv.weight": torch.randn(4, 3, 3, 3, generator=generator),
      "half": torch.randn(5, 7, generator=generator).half(),
      "count": torch.tensor([0, -3, 2**40 + 7, 9], dtype=torch.int64),
      "base": base,
      "view": base[1:, ::2].t(),  # offset 8, strides (2, 8) into base's storage
  }
  torch.save(state_dict, os.path.join(FIXTURES, "torch_reader_zip.pth"))
  torch.save(state_dict, os.path.join(FIXTURES, "torch_reader_legacy.pth"), _use_new_zipfile_serialization=False)
  np.savez(os.path.join(FIXTURES, "torch_reader_expected.npz"), **{k: v.numpy() for k, v in state_dict.items()})
  evil = {"conv.weight": torch.zeros(2), "evil": _Evil()}
  torch.save(evil, os.path.join(FIXTURES, "torch_reader_malicious.pth"))
  torch.save(evil, os.path.join(FIXTURES, "torch_reader_malicious_legacy.pth"), _use_new_zipfile_serialization=False)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--torch-python", help="python of a virtualenv with torch and torch-fidelity")
  parser.add_argument("--torch-side", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.torch_side:
    torch_features(args.torch_side)
    torch_reader_files()
  elif args.torch_python:
    main_side(args.torch_python)
  else:
    parser.error("--torch-python is required")


if __name__ == "__main__":
  main()
