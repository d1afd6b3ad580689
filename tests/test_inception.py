"""The FID Inception port against torch-fidelity, its quirks, its weight loading and the torch-free .pth reader.

The real weights cannot be had here, so the agreement test uses seeded random weights (random_state_dict,
calibrated so that pool3 varies between images) and the pool3/logits that torch-fidelity's own network and
TF1 resize computed from the same weights (tests/fixtures/inception_torch_fidelity.npz, made by
tests/make_inception_fixture.py in a side virtualenv with torch). Each quirk of the TF graph, switched off,
must then move the output by far more than the agreement tolerance.
"""
import hashlib
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hold_jax.evaluation.feature_networks import inception
from hold_jax.evaluation.feature_networks import inception_network
from hold_jax.evaluation.feature_networks import torch_weights

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
GROUPS = ("images_a", "images_b", "images_c")  # 2 x 32x32 RGB, 1 x 64x64 grey, 1 x 48x40 RGB
TOLERANCE = 1e-4  # max |ours - torch-fidelity| / max |torch-fidelity|, float32


def relative_error(ours, reference) -> float:
  return float(np.max(np.abs(np.asarray(ours) - reference)) / np.max(np.abs(reference)))


@pytest.fixture(scope="module")
def reference():
  with np.load(os.path.join(FIXTURES, "inception_torch_fidelity.npz")) as data:
    return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def state_dict(reference):
  return inception.random_state_dict(int(reference["seed"]))


@pytest.fixture(scope="module")
def variables(state_dict):
  return inception.params_from_state_dict(state_dict)


def network_input(reference, mode: str) -> jax.Array:
  """All fixture images pre-processed and stacked: (4, 299, 299, 3) float32."""
  return jnp.concatenate([inception_network.preprocess(reference[group], mode) for group in GROUPS])


@pytest.fixture(scope="module")
def ours(reference, variables):
  return jax.device_get(inception_network.forward(inception_network.FIDInceptionV3(), variables,
                                                  network_input(reference, "tf1")))


# ----------------------------------------------------------------------------------------------------------
# The network.


def test_parameter_count():
  shapes = jax.eval_shape(inception_network.FIDInceptionV3().init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, 299, 299, 3), jnp.float32))
  def count(tree):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))
  assert count(shapes["params"]) == inception_network.NUM_PARAMS == 23_850_960
  assert count(shapes["batch_stats"]) == inception_network.NUM_BATCH_STATS == 34_432
  assert len(jax.tree_util.tree_leaves(shapes)) == 472


def test_matches_torch_fidelity(reference, ours):
  for key, width in (("pool3", 2048), ("logits_unbiased", 1008), ("logits", 1008)):
    assert ours[key].shape == (4, width) and ours[key].dtype == np.float32
    assert relative_error(ours[key], reference[key]) < TOLERANCE, key
  # The weights are not degenerate: pool3 differs between images by a good fraction of its size.
  assert np.std(reference["pool3"], axis=0).mean() > 0.2 * np.abs(reference["pool3"]).mean()


@pytest.mark.parametrize("quirk", ["count_include_pad", "avg_pool_in_Mixed_7c", "half_pixel_resize"])
def test_each_quirk_matters(reference, variables, quirk):
  network = {"count_include_pad": inception_network.FIDInceptionV3(exclude_pad=False),
             "avg_pool_in_Mixed_7c": inception_network.FIDInceptionV3(last_pool="avg")}.get(
                 quirk, inception_network.FIDInceptionV3())
  x = network_input(reference, "half_pixel" if quirk == "half_pixel_resize" else "tf1")
  broken = jax.device_get(inception_network.forward(network, variables, x))
  print(quirk, {key: relative_error(broken[key], reference[key]) for key in ("pool3", "logits")})
  assert relative_error(broken["pool3"], reference["pool3"]) > 100 * TOLERANCE


# ----------------------------------------------------------------------------------------------------------
# Pre-processing.


def test_tf1_resize_by_hand():
  # 2 -> 4 without half-pixel centres: scale 1/2, sources s = 0, 0.5, 1, 1.5 -> taps (0, 0), (0, 1) at 1/2,
  # (1, 1), (1, 1) (the upper tap is clamped to the last pixel). Half-pixel would sample -0.25, 0.25, 0.75, 1.25.
  a, b, c, d = 10.0, 30.0, 50.0, 130.0
  x = jnp.asarray([[a, b], [c, d]], jnp.float32)[None, :, :, None]
  row0 = [a, (a + b) / 2, b, b]
  row1 = [c, (c + d) / 2, d, d]
  mid = [(p + q) / 2 for p, q in zip(row0, row1)]
  expected = np.array([row0, mid, row1, row1], np.float32)
  np.testing.assert_array_equal(np.asarray(inception_network._resize_tf1(x, 4))[0, :, :, 0], expected)


def test_preprocess_modes():
  image = np.array([[[10], [30]], [[50], [130]]], np.uint8)[None]  # (1, 2, 2, 1) grey
  tf1 = np.asarray(inception_network.preprocess(image, "tf1"))
  assert tf1.shape == (1, 299, 299, 3) and tf1.dtype == np.float32
  np.testing.assert_array_equal(tf1[..., 0], tf1[..., 2])  # grey repeated
  # Closed form of the TF1 resize of a 2 x 2 image at 299: s = 2 j / 299, upper tap clamped at 1.
  s = np.minimum(np.arange(299) * 2 / 299, 1.0)
  rows = np.array([10 + 20 * s, 50 + 80 * s])
  closed = rows[0][None, :] + (rows[1] - rows[0])[None, :] * s[:, None]
  np.testing.assert_allclose(tf1[0, :, :, 1], (closed - 128) / 128, atol=1e-5)
  half = np.asarray(inception_network.preprocess(image, "half_pixel"))
  assert half.shape == tf1.shape and half.dtype == np.float32
  assert np.abs(half - tf1).max() > 0.1  # up to a quarter of the range apart
  np.testing.assert_allclose(half[0, 0, 0], (10 - 128) / 128, rtol=1e-6)  # corners agree in both


def test_preprocess_rejects_bad_input():
  with pytest.raises(ValueError, match="uint8"):
    inception_network.preprocess(np.zeros((1, 8, 8, 3), np.float32))
  with pytest.raises(ValueError, match="C in"):
    inception_network.preprocess(np.zeros((1, 8, 8, 2), np.uint8))
  with pytest.raises(ValueError, match="bicubic"):
    inception_network.preprocess(np.zeros((1, 8, 8, 3), np.uint8), "bicubic")


# ----------------------------------------------------------------------------------------------------------
# The torch-free .pth reader.


@pytest.mark.parametrize("name", ["torch_reader_zip.pth", "torch_reader_legacy.pth"])
def test_reader_reads_both_formats(name):
  with open(os.path.join(FIXTURES, name), "rb") as f:
    state_dict = torch_weights.read_state_dict(f.read())
  with np.load(os.path.join(FIXTURES, "torch_reader_expected.npz")) as expected:
    assert sorted(state_dict) == sorted(expected.files)
    for key in expected.files:
      assert state_dict[key].dtype == expected[key].dtype, key
      np.testing.assert_array_equal(state_dict[key], expected[key], err_msg=key)
  assert state_dict["half"].dtype == np.float16 and state_dict["count"][2] == 2**40 + 7


def legacy_pickle_calling_os_system(command: str) -> bytes:
  """A legacy-format header followed by a pickle whose GLOBAL is os.system, written opcode by opcode."""
  header = b"".join(pickle.dumps(obj, protocol=2) for obj in (
      torch_weights.LEGACY_MAGIC, torch_weights.LEGACY_PROTOCOL, {"protocol_version": 1001, "little_endian": True}))
  return header + b"\x80\x02cos\nsystem\nX" + len(command).to_bytes(4, "little") + command.encode() + b"\x85R."


@pytest.mark.parametrize("name", ["torch_reader_malicious.pth", "torch_reader_malicious_legacy.pth", None])
def test_reader_refuses_code(name, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # the payload would create ./hold_jax_inception_pwned
  if name is None:
    data = legacy_pickle_calling_os_system("touch hold_jax_inception_pwned")
  else:
    with open(os.path.join(FIXTURES, name), "rb") as f:
      data = f.read()
  with pytest.raises(ValueError, match=r"refusing to unpickle the global (posix|os)\.system"):
    torch_weights.read_state_dict(data)
  assert not os.path.exists(tmp_path / "hold_jax_inception_pwned")


def test_reader_rejects_truncated_files():
  with open(os.path.join(FIXTURES, "torch_reader_legacy.pth"), "rb") as f:
    data = f.read()
  with pytest.raises(ValueError, match="truncated|elements"):
    torch_weights.read_state_dict(data[:-10])
  with pytest.raises(ValueError):
    torch_weights.read_state_dict(b"not a torch file")


# ----------------------------------------------------------------------------------------------------------
# load_inception.


def write_npz(path, state_dict) -> str:
  np.savez(path, **state_dict)
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def test_load_inception_end_to_end(tmp_path, state_dict, reference):
  path = tmp_path / "weights.npz"
  digest = write_npz(path, state_dict)
  network = inception.load_inception(str(path), expected_sha256=digest.upper())
  assert isinstance(network, inception.FeatureNetwork)
  assert (network.weights_sha256, network.resize, network.name) == (digest, "tf1", "inception-2015-12-05")
  out = network.apply(reference["images_a"])  # the public path: uint8 in, TF1 resize, network
  assert sorted(out) == ["logits", "logits_unbiased", "pool3"]
  for key in ("pool3", "logits_unbiased", "logits"):
    assert out[key].dtype == jnp.float32
    assert relative_error(out[key], reference[key][:2]) < TOLERANCE, key


def test_load_inception_rejects_missing_file(tmp_path):
  with pytest.raises(ValueError, match=r"not found: .*absent\.pth.*pytorch-fid's GitHub releases"):
    inception.load_inception(str(tmp_path / "absent.pth"))


def test_load_inception_rejects_wrong_hash(tmp_path, state_dict):
  path = tmp_path / "weights.npz"
  digest = write_npz(path, state_dict)
  with pytest.raises(ValueError, match=rf"weights\.npz have SHA-256 {digest}, expected 00ff.*torch-fidelity"):
    inception.load_inception(str(path), expected_sha256="00ff")
  with pytest.raises(ValueError, match=r"weights\.npz .* does not start with the published tag 6726825d"):
    inception.load_inception(str(path))


@pytest.mark.parametrize("change, message", [
    ("missing", r"missing key Mixed_6b\.branch7x7dbl_5\.conv\.weight"),
    ("shape", r"key fc\.bias has shape \(1000,\), expected \(1008,\)"),
    ("extra", r"unexpected key AuxLogits\.fc\.weight"),
])
def test_load_inception_rejects_wrong_keys(tmp_path, state_dict, change, message):
  broken = dict(state_dict)
  if change == "missing":
    del broken["Mixed_6b.branch7x7dbl_5.conv.weight"]
  elif change == "shape":
    broken["fc.bias"] = np.zeros(1000, np.float32)
  else:
    broken["AuxLogits.fc.weight"] = np.zeros((1000, 768), np.float32)
  path = tmp_path / "broken.npz"
  digest = write_npz(path, broken)
  with pytest.raises(ValueError, match=rf"broken\.npz.*{message}.*pytorch-fid"):
    inception.load_inception(str(path), expected_sha256=digest)


def test_load_inception_reads_pth_and_checks_it():
  # A real torch file through the .pth path: read without torch, then refused for what it lacks.
  path = os.path.join(FIXTURES, "torch_reader_zip.pth")
  with open(path, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  with pytest.raises(ValueError, match=r"torch_reader_zip\.pth.*missing key Conv2d_1a_3x3\.bn\.bias"):
    inception.load_inception(path, expected_sha256=digest)
  with pytest.raises(ValueError, match="resize"):
    inception.load_inception(path, resize="bicubic")
