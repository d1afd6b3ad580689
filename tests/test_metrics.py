"""FID, KID, IS and their statistics (hold_jax/evaluation/statistics.py, reference_stats.py), the FID command
(hold_jax/fid.py) and the point-cloud metrics (hold_jax/evaluation/point_clouds.py), against closed forms, scipy and
brute-force oracles; the command runs with a stand-in feature network (a fixed random projection of the
pixels), so no Inception weights are needed."""
import dataclasses
import json
import os
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
import scipy.linalg
import scipy.special
import scipy.stats
from PIL import Image

from hold_jax import fid
from hold_jax.data import input_pipeline
from hold_jax.evaluation import image_features
from hold_jax.evaluation import point_clouds
from hold_jax.evaluation import reference_stats
from hold_jax.evaluation import statistics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_spd(rng, d, scale=1.0):
  """A random symmetric positive definite (d, d) matrix with a spread of eigenvalues."""
  q, _ = np.linalg.qr(rng.normal(size=(d, d)))
  return scale * (q * rng.uniform(0.01, 2.0, size=d)) @ q.T


def sqrtm_fid(mu1, s1, mu2, s2):
  """The pytorch-fid formula with scipy.linalg.sqrtm of the (non-symmetric) product."""
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def relative(a, b):
  return np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b)))


# ----------------------------------------------------------------------------------------------------------
# FID.


@pytest.mark.parametrize("d", [16, 256])
def test_frechet_distance_matches_scipy_sqrtm(d):
  rng = np.random.default_rng(d)
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  s1, s2 = random_spd(rng, d), random_spd(rng, d, scale=3.0)
  expected = sqrtm_fid(mu1, s1, mu2, s2)
  assert abs(statistics.frechet_distance(mu1, s1, mu2, s2) - expected) <= 1e-6 * abs(expected)


def test_frechet_distance_closed_forms():
  rng = np.random.default_rng(0)
  d = 32
  mu1, mu2, sigma = rng.normal(size=d), rng.normal(size=d), random_spd(rng, d)
  equal = statistics.frechet_distance(mu1, sigma, mu2, sigma)
  assert equal == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-10)
  a, b = rng.uniform(0.1, 4.0, size=d), rng.uniform(0.1, 4.0, size=d)
  diagonal = statistics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
  assert diagonal == pytest.approx(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2), rel=1e-10)


def test_frechet_distance_of_identical_statistics_is_zero():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(500, 64)) @ rng.normal(size=(64, 64)) + 3.0
  mu, sigma = x.mean(axis=0), np.cov(x, rowvar=False)
  assert abs(statistics.frechet_distance(mu, sigma, mu, sigma)) < 1e-8
  singular = np.cov(x[:20], rowvar=False)  # rank 19 of 64: clipped, finite, within the documented sqrt(eps) noise
  assert abs(statistics.frechet_distance(mu, singular, mu, singular)) < 1e-6 * np.trace(singular)


def test_frechet_distance_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="feature sizes"):
    statistics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
  with pytest.raises(ValueError, match=r"\(D, D\)"):
    statistics.frechet_distance(np.zeros(3), np.eye(4), np.zeros(3), np.eye(3))


# ----------------------------------------------------------------------------------------------------------
# The accumulator.


def test_feature_stats_batches_and_hosts_match_np_cov():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(1000, 24)) @ rng.normal(size=(24, 24)) + rng.normal(size=24)
  one = statistics.FeatureStats()
  for batch in np.array_split(x, 7):
    one.add(batch)
  hosts = [statistics.FeatureStats().add(part) for part in np.array_split(x[::-1], 3)]  # other shifts, order
  merged = statistics.FeatureStats()
  for host in hosts:
    merged.merge(host)
  for stats in (one, merged):
    assert stats.n == 1000
    assert relative(stats.mean(), x.mean(axis=0)) < 1e-10
    assert relative(stats.covariance(), np.cov(x, rowvar=False)) < 1e-10


def test_feature_stats_are_accurate_under_a_large_offset():
  """Offset 1e6, spread 1: raw moments lose (1e6)^2 of float64's 1e16 and miss by about 1e-4; shifted sums do not."""
  rng = np.random.default_rng(3)
  x = 1e6 + rng.normal(size=(2000, 8)) @ rng.normal(size=(8, 8))
  stats = statistics.FeatureStats()
  for part in np.array_split(x, 4):
    stats.merge(statistics.FeatureStats().add(part[:100]).add(part[100:]))
  reference = np.cov(x, rowvar=False)
  assert relative(stats.covariance(), reference) < 1e-10
  assert relative(stats.mean(), x.mean(axis=0)) < 1e-12
  raw = (x.T @ x - np.outer(x.sum(0), x.sum(0)) / len(x)) / (len(x) - 1)
  assert relative(raw, reference) > 1e-6  # the failure the shift prevents: this test can tell


def test_feature_stats_npz_round_trip_and_merge(tmp_path):
  rng = np.random.default_rng(4)
  x = rng.normal(size=(300, 5)) + 10.0
  stats = statistics.FeatureStats().add(x[:200])
  path = stats.to_npz(tmp_path / "sub" / "stats.npz", weights_sha256="ab" * 32, resize="tf1")
  assert sorted(os.listdir(tmp_path / "sub")) == ["stats.npz"]  # no temporary file left behind
  loaded = statistics.FeatureStats.from_npz(path)
  assert loaded.n == 200 and loaded.metadata == {"weights_sha256": "ab" * 32, "resize": "tf1"}
  assert relative(loaded.covariance(), np.cov(x[:200], rowvar=False)) < 1e-12
  loaded.add(x[200:])  # resuming from a file continues the same sums
  assert relative(loaded.covariance(), np.cov(x, rowvar=False)) < 1e-10
  assert relative(loaded.mean(), x.mean(axis=0)) < 1e-12
  with np.load(path) as data:
    assert data["mu"].dtype == np.float64 and data["sigma"].shape == (5, 5) and int(data["n"]) == 200


def test_feature_stats_reject_bad_batches():
  stats = statistics.FeatureStats().add(np.ones((2, 3)))
  with pytest.raises(ValueError, match="shape"):
    stats.add(np.ones((2, 4)))
  with pytest.raises(ValueError, match="non-finite"):
    stats.add(np.full((1, 3), np.nan))
  with pytest.raises(ValueError, match="at least 2"):
    statistics.FeatureStats().add(np.ones((1, 3))).covariance()


# ----------------------------------------------------------------------------------------------------------
# KID.


def brute_force_mmd2(x, y, degree=3, coef0=1.0):
  """The unbiased estimator, term by term with the kernel (x.y / D + coef0)^degree."""
  m, d = x.shape
  k = lambda u, v: (np.dot(u, v) / d + coef0) ** degree  # noqa: E731
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
  return xx + yy - 2 * xy


def test_kid_matches_brute_force_on_the_same_subsets():
  rng = np.random.default_rng(5)
  a, b = rng.normal(size=(9, 4)), rng.normal(size=(11, 4)) + 0.3
  mean, std = statistics.kid(a, b, num_subsets=5, subset_size=6, seed=7)
  mmds = [brute_force_mmd2(a[i], b[j]) for i, j in statistics.kid_subsets(9, 11, 5, 6, seed=7)]
  assert mean == pytest.approx(np.mean(mmds), rel=1e-12, abs=1e-15)
  assert std == pytest.approx(np.std(mmds), rel=1e-12, abs=1e-15)


def test_kid_subsets_are_torch_fidelitys_draws():
  """One RandomState(seed): a's subset, then b's, for each subset in turn."""
  rng = np.random.RandomState(2020)
  expected = [(rng.choice(50, 10, replace=False), rng.choice(40, 10, replace=False)) for _ in range(3)]
  for (i, j), (ei, ej) in zip(statistics.kid_subsets(50, 40, 3, 10), expected):
    np.testing.assert_array_equal(i, ei)
    np.testing.assert_array_equal(j, ej)


def test_kid_is_zero_for_one_distribution_and_positive_for_shifted_ones():
  rng = np.random.default_rng(6)
  a, b = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
  mean, std = statistics.kid(a, b, num_subsets=50, subset_size=100)
  assert abs(mean) < 3 * std
  shifted_mean, shifted_std = statistics.kid(a, b + 1.0, num_subsets=50, subset_size=100)
  assert shifted_mean > 10 * shifted_std and shifted_mean > 100 * abs(mean)


def test_kid_caps_the_subset_size_and_refuses_tiny_samples():
  rng = np.random.default_rng(7)
  a, b = rng.normal(size=(8, 3)), rng.normal(size=(12, 3))
  capped = statistics.kid(a, b, num_subsets=3)  # 1000 > 8: subsets of 8
  assert capped == statistics.kid(a, b, num_subsets=3, subset_size=8)
  with pytest.raises(ValueError, match="at least 2"):
    statistics.kid(a[:1], b)


# ----------------------------------------------------------------------------------------------------------
# IS.


def direct_inception_score(logits, splits):
  """exp(H(p(y)) - mean H(p(y|x))) per contiguous split, with scipy's softmax and entropy."""
  n = len(logits)
  scores = []
  for i in range(splits):
    p = scipy.special.softmax(logits[i * n // splits:(i + 1) * n // splits].astype(np.float64), axis=1)
    scores.append(np.exp(scipy.stats.entropy(p.mean(axis=0)) - scipy.stats.entropy(p, axis=1).mean()))
  return np.mean(scores), np.std(scores)


def test_inception_score_closed_forms():
  mean, std = statistics.inception_score(np.zeros((50, 1008)))
  assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)
  for k in (1, 7, 100):
    logits = np.zeros((20 * k, 1008), np.float32)
    logits[np.arange(20 * k), np.arange(20 * k) % k] = 60.0  # each class k times per split of 2k
    mean, std = statistics.inception_score(logits, splits=10)
    assert mean == pytest.approx(k, rel=1e-6) and std < 1e-6 * k


def test_inception_score_matches_the_direct_formula():
  rng = np.random.default_rng(8)
  logits = (3.0 * rng.normal(size=(103, 1008))).astype(np.float32)  # 103: splits of 10 and 11 rows
  for splits in (1, 10):
    np.testing.assert_allclose(statistics.inception_score(logits, splits=splits),
                               direct_inception_score(logits, splits), rtol=1e-10)
  permuted = logits[np.random.RandomState(2020).permutation(103)]
  np.testing.assert_allclose(statistics.inception_score(logits, shuffle=True),
                             direct_inception_score(permuted, 10), rtol=1e-10)


def test_inception_score_survives_underflowing_probabilities():
  logits = np.zeros((20, 1008))
  logits[:, 0] = 1000.0  # every other class underflows to p = 0 in float64
  mean, _ = statistics.inception_score(logits)
  assert np.isfinite(mean) and mean == pytest.approx(1.0)
  with pytest.raises(ValueError, match="N >= splits"):
    statistics.inception_score(np.zeros((5, 1008)))


# ----------------------------------------------------------------------------------------------------------
# Reference statistics.


SHA_A, SHA_B = "a" * 64, "b" * 64


def test_reference_key_is_file_name_safe_and_distinct():
  key = reference_stats.reference_key("tfds:cifar10/3.0.2", "train[:50%]", 50000, SHA_A.upper(), "tf1")
  assert key.startswith("tfds_cifar10_3.0.2-train_50-n50000-tf1-waaaaaaaaaaaa-")
  assert all(c.isalnum() or c in "._-" for c in key)
  others = [reference_stats.reference_key("tfds_cifar10/3.0.2", "train[:50%]", 50000, SHA_A, "tf1"),
            reference_stats.reference_key("tfds:cifar10/3.0.2", "train[:50%]", None, SHA_A, "tf1"),
            reference_stats.reference_key("tfds:cifar10/3.0.2", "train[:50%]", 50000, SHA_B, "tf1"),
            reference_stats.reference_key("tfds:cifar10/3.0.2", "train[:50%]", 50000, SHA_A, "half_pixel")]
  assert len({key, *others}) == 5


def test_load_or_compute_caches(tmp_path):
  rng = np.random.default_rng(9)
  features = rng.normal(size=(40, 6))
  calls = []

  def compute():
    calls.append(1)
    stats = statistics.FeatureStats().add(features)
    return {"mu": stats.mean(), "sigma": stats.covariance(), "features": features[:30], "n": stats.n,
            "metadata": {"weights_sha256": SHA_A, "resize": "tf1"}}

  key = reference_stats.reference_key("digits", "train", 40, SHA_A, "tf1")
  first = reference_stats.load_or_compute(tmp_path, key, compute)
  second = reference_stats.load_or_compute(tmp_path, key, compute)
  assert len(calls) == 1
  assert sorted(os.listdir(tmp_path)) == [f"{key}.npz"]
  for result in (first, second):
    np.testing.assert_allclose(result["sigma"], np.cov(features, rowvar=False), rtol=1e-10)
    assert result["features"].dtype == np.float32 and result["features"].shape == (30, 6)
    assert result["n"] == 40 and result["metadata"]["weights_sha256"] == SHA_A and result["metadata"]["key"] == key
  for name in ("mu", "sigma", "features"):  # a fresh result is what a later load reads
    np.testing.assert_array_equal(first[name], second[name])


def test_check_compatible_names_both_networks_and_resizes():
  with pytest.raises(ValueError) as info:
    reference_stats.check_compatible({"weights_sha256": SHA_A, "resize": "tf1"}, SHA_B, "tf1")
  assert SHA_A in str(info.value) and SHA_B in str(info.value)
  with pytest.raises(ValueError) as info:
    reference_stats.check_compatible({"weights_sha256": SHA_A, "resize": "tf1"}, SHA_A, "half_pixel")
  assert "'tf1'" in str(info.value) and "'half_pixel'" in str(info.value)
  reference_stats.check_compatible({"weights_sha256": SHA_A.upper(), "resize": "tf1"}, SHA_A, "tf1")
  with mock.patch.object(reference_stats.logging, "warning") as warning:
    reference_stats.check_compatible({}, SHA_A, "tf1")  # a bare pytorch-fid / EDM file: accepted, with a warning
  assert warning.call_count == 1 and "cannot be checked" in warning.call_args[0][0]


def test_load_user_stats_reads_a_bare_mu_sigma_file_and_refuses_others(tmp_path):
  np.savez(tmp_path / "pytorch_fid.npz", mu=np.zeros(4, np.float32), sigma=np.eye(4, dtype=np.float32))
  loaded = reference_stats.load_user_stats(tmp_path / "pytorch_fid.npz")
  assert loaded["mu"].dtype == np.float64 and loaded["features"] is None and loaded["metadata"] == {}
  np.savez(tmp_path / "no_sigma.npz", mu=np.zeros(4))
  with pytest.raises(ValueError, match="no sigma"):
    reference_stats.load_user_stats(tmp_path / "no_sigma.npz")
  np.savez(tmp_path / "bad_shape.npz", mu=np.zeros(4), sigma=np.eye(3))
  with pytest.raises(ValueError, match=r"\(D, D\)"):
    reference_stats.load_user_stats(tmp_path / "bad_shape.npz")


# ----------------------------------------------------------------------------------------------------------
# The command.


@dataclasses.dataclass
class StandInNetwork:
  """A fixed random projection of the pixels: pool3 (B, 16) and logits (B, 1008), for images of one size."""
  weights_sha256: str = SHA_A
  resize: str = "tf1"
  name: str = "stand-in"
  calls: int = 0

  def apply(self, images):
    assert images.dtype == np.uint8 and images.ndim == 4 and images.shape[-1] in (1, 3)
    images = np.repeat(images, 3 // images.shape[-1], axis=-1)  # grey as three equal channels, as Inception
    self.calls += 1
    x = images.reshape(len(images), -1).astype(np.float64) / 255.0
    rng = np.random.default_rng(x.shape[1])
    projection = rng.normal(size=(x.shape[1], 16)) / np.sqrt(x.shape[1])
    features = np.tanh(x @ projection + 0.5)
    logits = features @ rng.normal(size=(16, 1008))
    return {"pool3": features.astype(np.float32), "logits": logits.astype(np.float32)}


def make_pixels(n=40, size=8, channels=3, seed=0):
  return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)


def write_pngs(folder, pixels):
  os.makedirs(folder)
  for i, image in enumerate(pixels):
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(os.path.join(folder, f"{i:06d}.png"))
  return str(folder)


def as_network(stand_in: StandInNetwork) -> image_features.Network:
  return image_features.from_outputs(stand_in, "pool3", "logits", "")


def run_cli(capsys, *argv, network=None):
  status = fid.main(list(argv), network=as_network(StandInNetwork() if network is None else network))
  out, err = capsys.readouterr()
  return status, out, err


@pytest.mark.parametrize("channels", [3, 1])
def test_cli_npz_against_png_folder_of_the_same_images(tmp_path, capsys, channels):
  pixels = make_pixels(channels=channels)
  np.savez(tmp_path / "samples.npz", pixels=pixels, x=pixels / 127.5 - 1)  # as --mode=sample writes them
  folder = write_pngs(tmp_path / "pngs", pixels)
  network = StandInNetwork()
  status, out, _ = run_cli(capsys, str(tmp_path / "samples.npz"), folder, "--batch_size", "16", network=network)
  assert status == 0 and len(out.strip().splitlines()) == 1
  result = json.loads(out)
  assert abs(result["fid"]) < 1e-6
  assert result["n_a"] == result["n_b"] == 40 and result["weights_sha256"] == SHA_A and result["resize"] == "tf1"
  # The subsets are the whole sets in two orders; the unbiased MMD^2 of a sample with itself is
  # 2 (1^T K 1 / m - tr K) / (m (m - 1)) <= 0.
  assert -1.0 < result["kid"] <= 0.0 and result["kid_subset_size"] == 40 and result["kid_std"] < 1e-12
  assert result["is"] > 1.0 and result["is_logits"] == "logits" and result["is_splits"] == 10
  assert network.calls == 2 * 3  # batches of 16, 16, 8 (padded to 16) per side


def test_cli_matches_the_library_and_reads_statistics(tmp_path, capsys):
  a, b = make_pixels(seed=1), make_pixels(seed=2) // 2
  np.savez(tmp_path / "a.npz", pixels=a)
  np.savez(tmp_path / "b.npz", pixels=b)
  status, out, _ = run_cli(capsys, str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--kid_subset_size", "20")
  images = json.loads(out)
  network = StandInNetwork()
  fa, fb = network.apply(a)["pool3"], network.apply(b)["pool3"]
  expected = statistics.frechet_distance(fa.mean(0), np.cov(fa.astype(np.float64), rowvar=False), fb.mean(0),
                                         np.cov(fb.astype(np.float64), rowvar=False))
  assert status == 0 and images["fid"] == pytest.approx(expected, rel=1e-6) and images["fid"] > 0.1
  assert images["kid"] == pytest.approx(statistics.kid(fa, fb, subset_size=20)[0], rel=1e-9)
  assert images["is"] == pytest.approx(statistics.inception_score(network.apply(a)["logits"])[0], rel=1e-9)

  stats = statistics.FeatureStats().add(fb)
  stats.to_npz(tmp_path / "ref.npz", weights_sha256=SHA_A, resize="tf1")
  status, out, _ = run_cli(capsys, str(tmp_path / "a.npz"), str(tmp_path / "ref.npz"))
  reference = json.loads(out)
  assert status == 0 and reference["fid"] == pytest.approx(images["fid"], rel=1e-9)
  assert "kid" not in reference and reference["n_b"] == 40 and "is" in reference


def test_cli_refuses_statistics_of_another_network(tmp_path, capsys):
  np.savez(tmp_path / "a.npz", pixels=make_pixels())
  statistics.FeatureStats().add(np.ones((3, 16)) * np.arange(3)[:, None]).to_npz(
      tmp_path / "ref.npz", weights_sha256=SHA_B, resize="tf1")
  status, out, err = run_cli(capsys, str(tmp_path / "a.npz"), str(tmp_path / "ref.npz"))
  assert status == 1 and out == "" and len(err.strip().splitlines()) == 1
  assert SHA_A in err and SHA_B in err


def bad_inputs(tmp_path):
  """(argv, words the one error line must contain) of each bad input."""
  good = str(tmp_path / "good.npz")
  np.savez(good, pixels=make_pixels())
  np.savez(tmp_path / "floats.npz", pixels=make_pixels().astype(np.float32))
  np.savez(tmp_path / "other.npz", x=np.zeros(3))
  (tmp_path / "text.npz").write_text("not a zip")
  os.makedirs(tmp_path / "empty")
  np.savez(tmp_path / "rgba.npz", pixels=make_pixels(channels=4))
  os.makedirs(tmp_path / "rgba")
  Image.fromarray(make_pixels(n=1, channels=4)[0]).save(tmp_path / "rgba" / "0.png")
  write_pngs(tmp_path / "mixed", make_pixels(n=3))
  Image.fromarray(make_pixels(n=1, size=9)[0]).save(tmp_path / "mixed" / "9.png")
  return [([good, str(tmp_path / "missing")], ["does not exist"]),
          ([good, str(tmp_path / "floats.npz")], ["float32", "uint8"]),
          ([good, str(tmp_path / "other.npz")], ["neither", "pixels", "mu"]),
          ([good, str(tmp_path / "text.npz")], ["not a readable .npz"]),
          ([str(tmp_path / "empty"), good], ["without PNG"]),
          ([good, str(tmp_path / "rgba.npz")], ["(40, 8, 8, 4)", "C = 1 or 3"]),
          ([str(tmp_path / "rgba"), good], ["mode RGBA"]),
          ([good, str(tmp_path / "mixed")], ["9.png", "one size"]),
          ([good, good, "--batch_size", "0"], ["--batch_size"])]


def test_cli_bad_inputs_give_one_line_and_a_nonzero_status(tmp_path, capsys):
  for argv, words in bad_inputs(tmp_path):
    status, out, err = run_cli(capsys, *argv)
    assert status != 0 and out == "", argv
    assert len(err.strip().splitlines()) == 1 and err.startswith("hold_jax.fid: error: "), err
    assert all(word in err for word in words), (argv, err)
  good = str(tmp_path / "good.npz")
  status = fid.main([good, good, "--inception_weights", str(tmp_path / "nowhere.pth")])  # no injected network
  err = capsys.readouterr().err
  assert status == 1 and len(err.strip().splitlines()) == 1 and "nowhere.pth" in err and "does not exist" in err


def test_cli_entry_point_reports_bad_input_without_traceback(tmp_path):
  np.savez(tmp_path / "a.npz", pixels=make_pixels().astype(np.int16))
  done = subprocess.run([sys.executable, "-m", "hold_jax.fid", str(tmp_path / "a.npz"), str(tmp_path / "a.npz"),
                         "--inception_weights", "w.pth"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                        check=False)
  assert done.returncode == 1 and done.stdout == ""
  assert done.stderr.strip().splitlines() == [f"hold_jax.fid: error: {tmp_path / 'a.npz'}: pixels are int16; FID "
                                              "takes uint8 images (N, H, W, C) in 0..255."]


def test_only_the_writing_process_caches_reference_statistics(tmp_path):
  features = np.random.default_rng(3).normal(size=(20, 4))
  calls = []

  def compute():
    calls.append(1)
    stats = statistics.FeatureStats().add(features)
    return {"mu": stats.mean(), "sigma": stats.covariance(), "metadata": {"weights_sha256": SHA_A, "resize": "tf1"}}

  key = reference_stats.reference_key("digits", "train", 20, SHA_A, "tf1")
  other_process = reference_stats.load_or_compute(tmp_path, key, compute, write=False)
  assert os.listdir(tmp_path) == [] and len(calls) == 1
  first_process = reference_stats.load_or_compute(tmp_path, key, compute)
  np.testing.assert_array_equal(other_process["sigma"], first_process["sigma"])
  assert os.listdir(tmp_path) == [f"{key}.npz"] and len(calls) == 2


# ------------------------------------------------------------------------------------------------------------
# Point clouds (hold_jax/evaluation/point_clouds.py).


def test_sliced_wasserstein_in_one_dimension_is_scipys_w1():
  """In 1-D every direction is +-1, so the sliced distance is W1 itself."""
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(500, 1)), rng.gamma(2.0, size=(500, 1))
  expected = scipy.stats.wasserstein_distance(a[:, 0], b[:, 0])
  assert point_clouds.sliced_wasserstein(a, b, num_directions=4) == pytest.approx(expected, rel=1e-12)
  assert point_clouds.sliced_wasserstein(a, a + 0.3) == pytest.approx(0.3, rel=1e-12)
  with pytest.raises(ValueError, match="equal shapes"):
    point_clouds.sliced_wasserstein(a, b[:10])


def test_spiral_distance_is_zero_on_the_arms_and_the_offset_beside_them():
  """Points on a noiseless arm are at distance ~0; a centre, which no arm passes through, at its nearest arm."""
  angle = np.array([6.0, 9.0, 12.0])
  arm = input_pipeline.SWISS_ROLL_SCALE * np.stack([angle * np.cos(angle), angle * np.sin(angle)], axis=-1)
  on_arm = input_pipeline.SWISS_ROLL_CENTRES[1] + arm
  assert point_clouds.spiral_distance(on_arm).max() < 1e-4
  centre = point_clouds.spiral_distance(input_pipeline.SWISS_ROLL_CENTRES[:1])[0]
  start = input_pipeline.SWISS_ROLL_SCALE * input_pipeline.SWISS_ROLL_ANGLES[0]  # |arm| = scale * angle grows
  assert centre == pytest.approx(start, rel=1e-9)
