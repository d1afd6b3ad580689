"""FID, KID and IS from Inception features, in float64 on the host.

Features come off the device as float32 batches (pool3 (B, 2048), logits (B, 1008)); everything after that is
numpy float64, because the quantities below are small differences of large sums: float32 moment sums and
bf16 features both move a 50k-sample FID measurably (docs/evaluation.md), and the published numbers (EDM,
StyleGAN2-ADA, torchmetrics, TF-GAN) all accumulate in float64.

- FeatureStats: the running (n, sum x, sum x x^T) of D-dim features, mergeable across batches, hosts and
  resumed runs; mean, covariance (over N - 1, as EDM and pytorch-fid), and an `.npz` with `mu` and `sigma`
  (the keys of pytorch-fid's, EDM's and TTUR's reference files) plus `n` and metadata strings.
- frechet_distance: the Frechet distance of two Gaussians, with the matrix square root taken through a
  symmetric eigendecomposition.
- kid: the unbiased MMD^2 with the cubic polynomial kernel, averaged over random subsets (torch-fidelity).
- inception_score: exp E_x KL(p(y|x) || p(y)) over splits (OpenAI improved-gan, StyleGAN2-ADA, torch-fidelity).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
from absl import logging
from etils import epath

from hold_jax.data import npz_files

# torch-fidelity's defaults (its `defaults.py` and metric_kid.py / metric_isc.py), which follow Binkowski et
# al.'s MMD-GAN `compute_scores.py` for KID and OpenAI's improved-gan for IS.
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
KID_DEGREE = 3
KID_COEF0 = 1.0
IS_SPLITS = 10
SEED = 2020  # torch-fidelity's rng_seed: its KID subsets and (when shuffling) its IS permutation


# ----------------------------------------------------------------------------------------------------------
# Moments.


class FeatureStats:
  """Running float64 moments of D-dim features: n, S1 = sum (x - c), S2 = sum (x - c)(x - c)^T.

  mean = c + S1 / n and covariance = (S2 - S1 S1^T / n) / (n - 1) (unbiased, over N - 1, as EDM and
  pytorch-fid's np.cov). The shift c is the mean of the first batch added. Why a shift: the raw-moment form
  sum x x^T / n - mu mu^T subtracts two numbers of size |mu|^2 to get one of size sigma^2, losing a factor
  (|mu| / sigma)^2 of the float64 precision. Inception pool3 features are non-negative with a mean of the order
  of their per-dimension spread, so a plain sum loses little; a feature set with a large common
  offset (mean 1e4, spread 1) would lose 8 of its 16 digits. Centring on the first batch's mean leaves
  residuals of the size of the spread, whatever the offset, and costs one subtraction per value.

  merge() re-centres the other accumulator's sums on this one's shift, exactly in algebra
  (x - c = (x - c') + d with d = c' - c):  S1 += S1' + n' d,  S2 += S2' + S1' d^T + d S1'^T + n' d d^T;
  the shifts of two hosts are both close to the mean, so d is small and nothing cancels.

  Attributes: n (int), dim (int or None before the first batch), metadata (dict of strings, from from_npz).
  """

  def __init__(self, dim: int | None = None):
    self.n = 0
    self.dim = dim
    self.metadata: dict[str, str] = {}
    self._shift = None  # (D,) float64
    self._sum = None  # (D,) float64
    self._scatter = None  # (D, D) float64

  def _start(self, shift: np.ndarray) -> None:
    self.dim = shift.shape[0]
    self._shift = shift
    self._sum = np.zeros(self.dim)
    self._scatter = np.zeros((self.dim, self.dim))

  def add(self, features) -> "FeatureStats":
    """Adds a batch of features (B, D) (any float dtype; converted to float64). Returns self."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or (self.dim is not None and x.shape[1] != self.dim):
      raise ValueError(f"Features must be (B, {self.dim or 'D'}); got shape {x.shape}.")
    if not np.isfinite(x).all():
      raise ValueError(f"Features contain {np.size(x) - np.isfinite(x).sum()} non-finite values.")
    if x.shape[0] == 0:
      return self
    if self._shift is None:
      self._start(x.mean(axis=0))
    x = x - self._shift
    self.n += x.shape[0]
    self._sum += x.sum(axis=0)
    self._scatter += x.T @ x
    return self

  def merge(self, other: "FeatureStats") -> "FeatureStats":
    """Adds the features counted by `other` (another batch set, host or resumed run). Returns self."""
    if other.n == 0:
      return self
    if self.dim is not None and other.dim != self.dim:
      raise ValueError(f"Cannot merge statistics of {other.dim}-dim features into {self.dim}-dim ones.")
    if self._shift is None:
      self._start(other._shift.copy())  # pylint: disable=protected-access
    d = other._shift - self._shift  # pylint: disable=protected-access
    s1, s2 = other._sum, other._scatter  # pylint: disable=protected-access
    self._sum += s1 + other.n * d
    self._scatter += s2 + np.outer(s1, d) + np.outer(d, s1) + other.n * np.outer(d, d)
    self.n += other.n
    return self

  def mean(self) -> np.ndarray:
    """mu (D,) float64."""
    if self.n == 0:
      raise ValueError("No features were added: the mean is undefined.")
    return self._shift + self._sum / self.n

  def covariance(self) -> np.ndarray:
    """sigma (D, D) float64, over N - 1; exactly symmetric."""
    if self.n < 2:
      raise ValueError(f"The covariance needs at least 2 features; {self.n} were added.")
    centred = self._scatter - np.outer(self._sum, self._sum) / self.n
    return (centred + centred.T) / (2 * (self.n - 1))

  def to_npz(self, path, **metadata) -> epath.Path:
    """Writes `mu` (D,), `sigma` (D, D) float64, `n` and the metadata as strings to `path`, atomically."""
    arrays = {"mu": self.mean(), "sigma": self.covariance(), "n": np.asarray(self.n, np.int64)}
    return npz_files.write_npz_atomic(path, {**arrays, **npz_files.metadata_arrays({**self.metadata, **metadata})})

  @classmethod
  def from_npz(cls, path) -> "FeatureStats":
    """The statistics a to_npz wrote (or any .npz with `mu`, `sigma` and `n`), ready to merge into.

    They are restored as shift = mu, S1 = 0, S2 = (n - 1) sigma, which gives back mu and sigma exactly (up to
    one rounding) and merges like the original sums.
    """
    arrays = npz_files.read_npz(path)
    missing = [key for key in ("mu", "sigma", "n") if key not in arrays]
    if missing:
      raise ValueError(f"{path} lacks {missing}: not a statistics file of FeatureStats.to_npz.")
    mu, sigma, n = arrays["mu"].astype(np.float64), arrays["sigma"].astype(np.float64), int(arrays["n"])
    check_gaussian(mu, sigma, str(path))
    stats = cls()
    stats._start(mu)  # pylint: disable=protected-access
    stats.n = n
    stats._scatter = sigma * (n - 1)  # pylint: disable=protected-access
    stats.metadata = npz_files.metadata_of(arrays)
    return stats


# A covariance's rounding, relative: sigma must be symmetric to SYMMETRY_TOLERANCE of its largest entry, and
# sigma + COVARIANCE_TOLERANCE ||sigma||_F I positive definite (check_covariance says why these sizes).
SYMMETRY_TOLERANCE = 1e-6
COVARIANCE_TOLERANCE = 1e-6
SIGMA_FIX = ("sigma must be the features' covariance, numpy.cov(features, rowvar=False): recompute the statistics, "
             "or give the images themselves")


def check_covariance(sigma: np.ndarray, what: str, eigenvalues: np.ndarray | None = None) -> None:
  """ValueError unless the finite (D, D) sigma is a covariance up to rounding: symmetric and positive
  semi-definite. FID's square roots clip negative eigenvalues to 0 (trace_sqrt_product), so any other matrix
  (a precision matrix, a damaged or hand-made file) gives a number, not an error. eigenvalues (D,), ascending:
  sigma's, when the caller has them (frechet_distance), in place of the test below.

  Tolerances. A real covariance comes out with tiny negative eigenvalues where it is singular (fewer samples
  than dimensions, constant features), and larger ones where it was stored in float32: rounding each entry to
  relative precision u moves every eigenvalue by at most ||E||_2 <= ||E||_F <= u ||sigma||_F (Weyl), 6e-8
  ||sigma||_F for float32 (u = 2^-24) and 1e-16 for float64; float64 accumulation adds far less. So sigma is
  refused only for an eigenvalue below -COVARIANCE_TOLERANCE ||sigma||_F, 1e-6, 16 times float32's bound
  (||sigma||_F >= the largest eigenvalue, so every refused sigma has one below -1e-6 times its largest). A
  wrong matrix has negative eigenvalues of the size of its positive ones, far past any such tolerance. The
  test: sigma + 1e-6 ||sigma||_F I has a Cholesky factor, which float64 Cholesky finds whenever its smallest
  eigenvalue is that far above 0 (Higham, Accuracy and Stability, Thm 10.7: the bound is 20 D^1.5 eps, 2e-10
  at D = 2048). A Cholesky costs a third of an eigvalsh, so every FID affords it; the eigenvalues are computed
  only when it fails (they decide at the bound, and the message gives them). Symmetry: float32 storage keeps
  a symmetric matrix exactly symmetric, and np.cov's and FeatureStats' are symmetric to the last bit or close.
  """
  scale = np.abs(sigma).max(initial=0.0)
  asymmetry = np.abs(sigma - sigma.T)
  if asymmetry.max(initial=0.0) > SYMMETRY_TOLERANCE * scale:
    i, j = np.unravel_index(np.argmax(asymmetry), asymmetry.shape)
    raise ValueError(f"{what}: sigma is not symmetric (sigma[{i}, {j}] = {sigma[i, j]:.6g} but sigma[{j}, {i}] = "
                     f"{sigma[j, i]:.6g}), so it is not a covariance; {SIGMA_FIX}.")
  norm = np.linalg.norm(sigma)
  if norm == 0:  # features that never vary: the zero covariance
    return
  w = eigenvalues
  if w is None:
    try:
      np.linalg.cholesky(sigma + COVARIANCE_TOLERANCE * norm * np.eye(sigma.shape[0]))
      return
    except np.linalg.LinAlgError:
      w = np.linalg.eigvalsh(sigma)  # at the bound rounding decides Cholesky's way: the eigenvalues rule
  if w[0] < -COVARIANCE_TOLERANCE * norm:
    raise ValueError(f"{what}: sigma is not a covariance: it has the eigenvalue {w[0]:.6g} (the largest is "
                     f"{w[-1]:.6g}), and a covariance has none below 0 beyond rounding ({COVARIANCE_TOLERANCE:g} "
                     f"times its Frobenius norm, {norm:.6g}); {SIGMA_FIX}.")


def check_gaussian(mu: np.ndarray, sigma: np.ndarray, what: str, covariance: bool = True) -> None:
  """ValueError unless mu is (D,) and sigma (D, D), both finite, and (with `covariance`) sigma a covariance
  (check_covariance)."""
  if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
    raise ValueError(f"{what}: mu must be (D,) and sigma (D, D); got {mu.shape} and {sigma.shape}.")
  if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
    raise ValueError(f"{what}: mu or sigma contains non-finite values.")
  if covariance:
    check_covariance(sigma, what)


# ----------------------------------------------------------------------------------------------------------
# FID.


def _sqrt_psd(matrix: np.ndarray, eigh: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
  """The symmetric square root V diag(sqrt(max(w, 0))) V^T of a symmetric PSD matrix (D, D); eigh: its
  (w, V) when already computed."""
  w, v = np.linalg.eigh(matrix) if eigh is None else eigh
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray,
                       eigh1: tuple[np.ndarray, np.ndarray] | None = None) -> float:
  """tr sqrt(S1 S2) = tr sqrt(A S2 A), A = sqrt(S1), for symmetric PSD S1, S2 (D, D), in float64.

  S1 S2 is not symmetric, but it is similar to A S2 A (A^-1 (A S2 A) A = S1 S2 when S1 is invertible, and by
  continuity the eigenvalues agree when it is not), and A S2 A is symmetric PSD: its eigenvalues come from
  eigvalsh, real and stable, and tr sqrt is the sum of their square roots. This is TF-GAN's trace_sqrt_product
  idea; it agrees with scipy.linalg.sqrtm(S1 S2) to rounding (tests/test_metrics.py), is faster, and avoids
  sqrtm's complex round-off (scipy 1.11/1.12 returned large imaginary parts). Eigenvalues of S1 and of A S2 A
  that should be >= 0 come out as tiny negatives (of the order of eps ||S||) from rounding, and a covariance from
  fewer samples than dimensions is singular with many of them: they are clipped to 0 before the square root,
  which would otherwise be NaN, and which moves the result by no more than the rounding already did.

  Accuracy. With full-rank covariances (N > D, the FID protocol's 50k samples against D = 2048) the result
  agrees with sqrtm to rounding. With singular ones (N <= D) the zero eigenvalues of A S2 A come out
  as rounding noise of size eps ||S||^2, and their square roots add (D - rank) sqrt(eps) ||S|| to the trace
  (scipy's sqrtm errs by as much). It is the
  problem's conditioning, not the method's (tr sqrt is not Lipschitz at singular matrices), and one more reason
  the protocol wants N well above D. (Summing the singular values of sqrt(S2) sqrt(S1) instead is exact when the
  null spaces coincide but takes several times as long at D = 2048; not worth it for the full-rank case.)
  """
  a = _sqrt_psd(sigma1, eigh1)
  m = a @ sigma2 @ a
  w = np.linalg.eigvalsh((m + m.T) / 2)
  return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """The Frechet (2-Wasserstein) distance^2 of N(mu1, S1) and N(mu2, S2): mu (D,), sigma (D, D).

    FID = ||mu1 - mu2||^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2)

  computed in float64 on the host with trace_sqrt_product. Identical statistics give 0 up to float64
  rounding; the value is not clipped at 0, so a tiny negative result shows rounding rather than hiding it.
  Both sigmas must be covariances (check_covariance): the first is checked with the eigenvalues its square
  root needs anyway, so the checks cost one Cholesky factorisation.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  check_gaussian(mu1, sigma1, "first statistics", covariance=False)
  check_gaussian(mu2, sigma2, "second statistics")
  if mu1.shape != mu2.shape:
    raise ValueError(f"The statistics have different feature sizes: {mu1.shape[0]} and {mu2.shape[0]}.")
  eigh1 = np.linalg.eigh(sigma1)
  check_covariance(sigma1, "first statistics", eigh1[0])
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2)
               - 2.0 * trace_sqrt_product(sigma1, sigma2, eigh1))


# ----------------------------------------------------------------------------------------------------------
# KID.


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = KID_DEGREE, gamma: float | None = None,
                      coef0: float = KID_COEF0) -> np.ndarray:
  """k(x, y) = (gamma x.y + coef0)^degree for rows x (m, D), y (m', D) -> (m, m'); gamma None is 1 / D."""
  gamma = 1.0 / x.shape[1] if gamma is None else gamma
  return (gamma * (x @ y.T) + coef0) ** degree


def mmd2_unbiased(k_xx: np.ndarray, k_xy: np.ndarray, k_yy: np.ndarray) -> float:
  """The unbiased MMD^2 estimate from the kernel matrices of m samples per side (m, m):

    MMD^2_u = [sum_{i != j} k(x_i, x_j) + sum_{i != j} k(y_i, y_j)] / (m (m - 1)) - 2 sum_{i, j} k(x_i, y_j) / m^2

  (Binkowski et al. 2018; torch-fidelity's mmd_est='unbiased'): the cross term keeps its diagonal, unlike the
  'u-statistic' variant. Unbiased, so it is negative about half the time when the two distributions are equal.
  """
  m = k_xx.shape[0]
  within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
  return float(within - 2.0 * k_xy.sum() / (m * m))


def kid_subset_size(n_a: int, n_b: int, subset_size: int = KID_SUBSET_SIZE) -> int:
  """min(subset_size, n_a, n_b): the subset size used (StyleGAN2-ADA's and clean-fid's cap; torch-fidelity
  refuses instead). ValueError below 2, where the estimator is undefined."""
  m = min(subset_size, n_a, n_b)
  if m < 2:
    raise ValueError(f"KID needs at least 2 samples per side and a subset size of at least 2; got {n_a} and {n_b} "
                     f"samples, subset size {subset_size}.")
  return m


def kid_subsets(n_a: int, n_b: int, num_subsets: int, m: int, seed: int = SEED) -> Iterator[tuple]:
  """(indices into a (m,), indices into b (m,)) of each subset, drawn without replacement.

  One np.random.RandomState(seed) draws a's subset then b's, subset after subset, as torch-fidelity's
  kid_features_to_metric does: with its seed 2020 and the same features the subsets, hence the KID, are the same.
  """
  rng = np.random.RandomState(seed)
  for _ in range(num_subsets):
    yield rng.choice(n_a, m, replace=False), rng.choice(n_b, m, replace=False)


def kid(features_a, features_b, num_subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
        degree: int = KID_DEGREE, gamma: float | None = None, coef0: float = KID_COEF0,
        seed: int = SEED) -> tuple[float, float]:
  """Kernel Inception Distance (mean, std) of features a (N_a, D) and b (N_b, D).

  For each of num_subsets pairs of random subsets (m = min(subset_size, N_a, N_b) rows of each, without
  replacement; kid_subsets), the unbiased MMD^2 (mmd2_unbiased) with k(x, y) = (gamma x.y + coef0)^degree;
  the result is the mean and the population std (ddof 0) over the subsets. Defaults are torch-fidelity's
  (100 subsets of 1000, degree 3, gamma 1/D, coef0 1, RandomState(2020)), which are MMD-GAN's; StyleGAN2-ADA
  and clean-fid use the same estimator with global np.random draws. Papers often print KID x 1e3.
  The kernel is float64 here (torch-fidelity computes it in float32, so the two differ at float32 rounding).
  """
  a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
    raise ValueError(f"KID needs features (N_a, D) and (N_b, D); got shapes {a.shape} and {b.shape}.")
  m = kid_subset_size(a.shape[0], b.shape[0], subset_size)
  if m < subset_size:
    logging.warning("KID subset size %d capped to %d, the smaller sample size; KIDs of other subset sizes are "
                    "comparable in expectation but not in variance.", subset_size, m)

  def kernel(x, y):
    return polynomial_kernel(x, y, degree, gamma, coef0)

  mmds = np.array([mmd2_unbiased(kernel(a[i], a[i]), kernel(a[i], b[j]), kernel(b[j], b[j]))
                   for i, j in kid_subsets(a.shape[0], b.shape[0], num_subsets, m, seed)])
  return float(mmds.mean()), float(mmds.std())


# ----------------------------------------------------------------------------------------------------------
# Inception score.


def log_softmax(logits: np.ndarray) -> np.ndarray:
  """log p (N, C) of logits (N, C), float64, stable: logits - max - log sum exp(logits - max)."""
  z = np.asarray(logits, np.float64)
  z = z - z.max(axis=1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def split_score(log_p: np.ndarray) -> float:
  """exp(mean_x KL(p(y|x) || p(y))) of one split's log p(y|x) (n, C); p(y) is the split's mean p(y|x).

  Classes with p(y|x) = 0 (underflow) contribute 0 (the limit of p log p), never NaN.
  """
  p = np.exp(log_p)
  with np.errstate(divide="ignore", invalid="ignore"):  # log 0 = -inf where p(y) = 0; those terms are masked
    terms = np.where(p > 0, p * (log_p - np.log(p.mean(axis=0))), 0.0)
  return float(np.exp(terms.sum(axis=1).mean()))


def inception_score(logits, splits: int = IS_SPLITS, shuffle: bool = False, seed: int = SEED) -> tuple[float, float]:
  """Inception score (mean, std) of classifier logits (N, C), C = 1008 for the FID Inception network.

    IS = exp(E_x KL(p(y|x) || p(y))),  p(y|x) = softmax(logits), p(y) = mean of p(y|x) over the split

  over `splits` contiguous splits [i N // splits, (i + 1) N // splits), reporting the mean and the population
  std (ddof 0) of the per-split scores; softmax in float64. This is torch-fidelity's isc_features_to_metric,
  which follows OpenAI's improved-gan (also StyleGAN2-ADA and guided-diffusion). shuffle=True permutes the rows
  first with np.random.RandomState(seed).permutation(N), torch-fidelity's default (seed 2020); the default here
  is False, the contiguous splits of improved-gan and StyleGAN2-ADA, which equal torch-fidelity's with
  samples_shuffle=False.

  Which logits: the standard score uses all 1008 columns of the TF graph's output, including column 0
  ('background') and the 7 unused ones at the end; dropping any column changes the softmax and the score, so
  none is dropped here. The standard score also uses the logits *without* the fc bias (improved-gan's
  MatMul input, torch-fidelity's 'logits_unbiased', StyleGAN2-ADA's no_output_bias=True); with the bias the
  score differs. This function scores whatever logits it is given: the caller chooses (hold_jax.fid uses
  'logits_unbiased' when the network provides it, else 'logits', and reports which).
  """
  logits = np.asarray(logits)
  if logits.ndim != 2 or splits < 1 or logits.shape[0] < splits:
    raise ValueError(f"The Inception score needs logits (N, C) with N >= splits = {splits}; got shape {logits.shape}.")
  log_p = log_softmax(logits)
  n = log_p.shape[0]
  if shuffle:
    log_p = log_p[np.random.RandomState(seed).permutation(n)]
  scores = np.array([split_score(log_p[i * n // splits:(i + 1) * n // splits]) for i in range(splits)])
  return float(scores.mean()), float(scores.std())
