"""The digits classifier that stands in for Inception on the digits: reproducible, accurate, and its features
tell real digits from damaged ones by a Fréchet distance."""
import hashlib
import json
import os

import jax
import numpy as np
import pytest
from scipy import linalg

from hold_jax.evaluation.feature_networks import digits_features

# Retraining matches the committed weights to this fraction of each array's largest entry. Measured: the same
# training with XLA limited to AVX or SSE4.2 code (XLA_FLAGS=--xla_cpu_max_isa=AVX: no fused multiply-add)
# differs from the AVX2 one by at most 5e-6 of it; perturbing the initialisation by 1e-7 relative moves the
# trained weights by 3e-6. One adam step fewer (499 of 500) moves them by 7e-4, another seed by more than 1.
PARAM_TOLERANCE = 1e-4


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
  """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of features (N, D), in float64."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  root = linalg.sqrtm(cov_a @ cov_b).real
  return float(np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(cov_a + cov_b - 2 * root))


def shifted_right(images: np.ndarray) -> np.ndarray:
  """(N, H, W, 1) uint8 moved one pixel right; the left column becomes background."""
  moved = np.zeros_like(images)
  moved[:, :, 1:] = images[:, :, :-1]
  return moved


def blurred(images: np.ndarray) -> np.ndarray:
  """(N, H, W, 1) uint8 blurred by the 3x3 binomial kernel [1 2 1]^T [1 2 1] / 16, zero outside the image."""
  taps = np.array([0.25, 0.5, 0.25])
  padded = np.pad(images[..., 0].astype(np.float64), ((0, 0), (1, 1), (1, 1)))
  height, width = images.shape[1:3]
  rows = sum(tap * padded[:, i:i + height, :] for i, tap in enumerate(taps))
  both = sum(tap * rows[:, :, i:i + width] for i, tap in enumerate(taps))
  return np.rint(both)[..., None].astype(np.uint8)


@pytest.fixture(scope="module")
def network():
  return digits_features.load_digits_features()


@pytest.fixture(scope="module")
def committed():
  with open(digits_features.DEFAULT_WEIGHTS, "rb") as file:
    data = file.read()
  return data, digits_features.read_weights(data, digits_features.DEFAULT_WEIGHTS)


@pytest.fixture(scope="module")
def retrained():
  return digits_features.train_digits_classifier(seed=0)


def features(network, images: np.ndarray) -> np.ndarray:
  return np.asarray(network.apply(images)["features"])


def test_retraining_reproduces_the_committed_weights(network, committed, retrained, tmp_path):
  """Within PARAM_TOLERANCE and with the same prediction for every one of the 1,797 digits, not bit for bit.

  The SHA-256 is reproduced on a machine whose XLA emits the same instructions as the one that wrote the file
  (this one does), but not in general: XLA CPU picks its vector code by the host's instruction set, and with
  fused multiply-add or without it float32 sums round differently (see PARAM_TOLERANCE), so a bitwise test
  would fail on another CPU with nothing wrong.
  """
  _, committed_params = committed
  path = str(tmp_path / "retrained.npz")
  digits_features.save_weights(retrained, path)
  expected, actual = digits_features._flat(committed_params), digits_features._flat(retrained)
  assert sorted(actual) == sorted(expected)
  for name, array in expected.items():
    scale = np.max(np.abs(array))
    np.testing.assert_allclose(actual[name], array, rtol=0, atol=PARAM_TOLERANCE * scale, err_msg=name)
  new = digits_features.load_digits_features(path)
  for split in digits_features.SPLITS:
    images = digits_features.digits_pixels(split)
    np.testing.assert_array_equal(np.asarray(new.apply(images)["logits"]).argmax(1),
                                  np.asarray(network.apply(images)["logits"]).argmax(1))


def test_training_is_bitwise_deterministic_on_one_machine(retrained):
  """Same seed, same machine: the same file bytes, so a rerun of --write changes nothing. The caller's
  jax_enable_x64 does not matter either: `retrained` ran with it off, as the --write command runs (and the
  tests), this run with it on."""
  with jax.enable_x64(True):
    again = digits_features.train_digits_classifier(seed=0)
  assert digits_features.weights_bytes(again) == digits_features.weights_bytes(retrained)


def test_committed_file_identity_size_and_heldout_accuracy(network, committed):
  data, params = committed
  assert network.weights_sha256 == hashlib.sha256(data).hexdigest()
  assert digits_features.weights_bytes(params) == data  # the file is exactly what save_weights writes
  assert os.path.getsize(digits_features.DEFAULT_WEIGHTS) < 300_000
  assert (network.name, network.resize) == ("digits-classifier-v1", "block-mean to 8x8")
  assert digits_features.accuracy(network, "heldout") >= 0.95
  assert len(digits_features.digits_pixels("train")) == 1500
  assert len(digits_features.digits_pixels("heldout")) == 297


def test_pixels_are_the_pipeline_scale():
  """Level k of the 17 becomes rint(k 255 / 16), as image_data.to_pixels makes a sample of level k."""
  pixels, labels = digits_features.digits_pixels("heldout"), digits_features.digits_labels("heldout")
  assert pixels.dtype == np.uint8 and pixels.shape == (297, 8, 8, 1) and labels.shape == (297,)
  levels = np.rint(np.arange(17) * 255 / 16).astype(np.uint8)
  assert set(np.unique(pixels)) <= set(levels) and pixels.max() == 255
  assert digits_features.digits_pixels("heldout", image_size=16).shape == (297, 16, 16, 1)
  with pytest.raises(ValueError, match="heldout"):
    digits_features.digits_pixels("test")


def test_output_shapes_and_input_checks(network):
  images = digits_features.digits_pixels("heldout")[:5]
  for batch in (images, digits_features.digits_pixels("heldout", image_size=16)[:5]):
    outputs = network.apply(batch)
    assert outputs["features"].shape == (5, digits_features.NUM_FEATURES) == (5, 64)
    assert outputs["logits"].shape == (5, 10)
    assert outputs["features"].dtype == outputs["logits"].dtype == np.float32
  with pytest.raises(ValueError, match="uint8"):
    network.apply(images.astype(np.float32) / 127.5 - 1)
  with pytest.raises(ValueError, match="multiples of 8"):
    network.apply(np.zeros((2, 12, 12, 1), np.uint8))


def test_pixels_repeated_2x2_give_the_8x8_features(network):
  images = digits_features.digits_pixels("heldout")
  doubled = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)
  assert doubled.shape == (297, 16, 16, 1)
  np.testing.assert_allclose(features(network, doubled), features(network, images), rtol=0, atol=1e-5)


def test_16x16_images_are_averaged_over_2x2_blocks(network):
  """Blocks [v+e, v-e; v-e, v+e] have mean v: they give v's features, which taking one pixel per block
  (v+e) would not; the features of the one-pixel images differ by more than 0.1."""
  images = digits_features.digits_pixels("heldout")
  values = np.repeat(np.repeat(images.astype(np.int32), 2, axis=1), 2, axis=2)
  spread = np.minimum(np.minimum(values, 255 - values), 16)
  sign = np.where(np.add.outer(np.arange(16), np.arange(16)) % 2, -1, 1)[None, :, :, None]
  checkered = (values + sign * spread).astype(np.uint8)
  reference = features(network, images)
  np.testing.assert_allclose(features(network, checkered), reference, rtol=0, atol=1e-5)
  assert np.abs(features(network, np.ascontiguousarray(checkered[:, ::2, ::2])) - reference).max() > 0.1


def test_frechet_distance_separates_digits_from_damaged_digits(network):
  """Real digits are close to real digits; noise, and the held-out digits moved or blurred by one pixel, are
  at least 10x farther. The train/held-out distance is mostly the finite-sample bias of 297 images."""
  train, heldout = digits_features.digits_pixels("train"), digits_features.digits_pixels("heldout")
  noise = np.random.default_rng(0).integers(0, 256, heldout.shape, dtype=np.uint8)
  reference = features(network, heldout)
  same = frechet_distance(features(network, train), reference)
  damaged = {name: frechet_distance(features(network, images), reference)
             for name, images in [("noise", noise), ("shifted", shifted_right(heldout)),
                                  ("blurred", blurred(heldout))]}
  assert 0 < same and all(distance > 10 * same for distance in damaged.values()), (same, damaged)


def test_the_fid_command_measures_digits_as_the_evaluation_does(tmp_path, capsys):
  """`python -m hold_jax.fid A B --feature_network=digits` of the held-out digits against the training digits
  gives the held-out baseline `--mode=eval` reports beside a digits model's fd_digits and kid_digits: both go
  through image_features (one network, one batching, one naming)."""
  from hold_jax import fid
  from hold_jax.configs import digits
  from hold_jax.evaluation import image_features
  from hold_jax.evaluation import image_quality

  config = digits.get_config()
  config.eval.metrics = ("fid", "kid")
  baselines = image_quality.digits_baselines(config, image_features.load_digits(), config.eval)
  np.savez(tmp_path / "heldout.npz", pixels=digits_features.digits_pixels("heldout", config.data.image_size))
  np.savez(tmp_path / "train.npz", pixels=digits_features.digits_pixels("train", config.data.image_size))
  argv = [str(tmp_path / "heldout.npz"), str(tmp_path / "train.npz"), "--feature_network", "digits",
          "--batch_size", str(config.eval.feature_batch_size)]
  assert fid.main(argv) == 0, capsys.readouterr().err
  result = json.loads(capsys.readouterr().out)
  expected = baselines["heldout_digits"]
  assert "fid" not in result and result["fd_digits"] == pytest.approx(expected["fd_digits"], rel=1e-6)
  assert result["kid_digits"] == pytest.approx(expected["kid_digits"], rel=1e-6, abs=1e-9)
  assert result["weights_sha256"] == image_features.load_digits().weights_sha256


def test_the_fid_command_knows_the_evaluation_feature_networks():
  from hold_jax import fid
  from hold_jax.evaluation import image_features
  assert fid.FEATURE_NETWORKS == image_features.FEATURE_NETWORKS
