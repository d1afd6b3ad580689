"""The probability-flow log-density, the auxiliary-entropy bound and bits/dim (docs/likelihood.md).

The references are closed forms: for Gaussian data every marginal of the order-n process is Gaussian, so
log p_eps(u) of the augmented state, log p_eps(x) and the bound's gap E_q KL(q(aux | x) || p(aux | x)) are
known exactly. The data are anisotropic and rotated, N(R m, R diag(v) R^T), so that the score's Jacobian is
not diagonal and Hutchinson's estimator is really random.
"""
import functools
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hold_jax.cli import config_checks
from hold_jax.configs import default
from hold_jax.data import image_data
from hold_jax.evaluation import likelihood
from hold_jax.evaluation import nll_rounds
from hold_jax.process import exact_scores
from hold_jax.process import perturbation_kernel
from hold_jax.process import sde as sde_lib
from test_sde import make_sde

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANGLE = 0.6
ROTATION = np.array([[np.cos(ANGLE), -np.sin(ANGLE)], [np.sin(ANGLE), np.cos(ANGLE)]])
MEAN_Y = np.array([0.4, -0.3])  # x = R y, y_k ~ N(MEAN_Y[k], VAR_Y[k]) independent
VAR_Y = np.array([0.5, 0.05])
NUM_EXAMPLES = 96  # every Gaussian solve has this batch, so each order compiles once (compiling dominates)
SETTINGS = likelihood.ODESettings(divergence="exact", rtol=1e-7, atol=1e-7)


def rotated_gaussian_score(sde, u, t):
  """Last-block score of x = R y: p_t(u) = p_t^y(R^T u) coordinate-wise, so s^x(u) = R s^y(R^T u).

  Per y coordinate Sigma_t = Sigma_t(x_0 known) + v_k Phi e_0 e_0^T Phi^T from one kernel evaluation (a third
  of the compile time of two exact_scores calls; test_reference_score_is_exact_scores checks it against them).
  """
  phi, known_x0_cov = perturbation_kernel.marginal(sde, t, sde_lib.initial_cov(sde, 0.0, u.dtype))
  first_column = phi[:, :, 0]
  u_y = jnp.einsum("bnd,de->bne", u, jnp.asarray(ROTATION, u.dtype))
  scores = []
  for k in range(2):
    sigma = known_x0_cov + VAR_Y[k] * first_column[:, :, None] * first_column[:, None, :]
    centred = u_y[:, :, k] - first_column * MEAN_Y[k]
    scores.append(-jnp.linalg.solve(sigma, centred[..., None])[:, -1, 0])
  return jnp.stack(scores, axis=-1) @ jnp.asarray(ROTATION.T, u.dtype)


def rotated_score_by_exact_scores(sde, u, t):
  u_y = jnp.einsum("bnd,de->bne", u, jnp.asarray(ROTATION, u.dtype))
  score_y = jnp.concatenate([exact_scores.gaussian_score(sde, u_y[:, :, k:k + 1], t, MEAN_Y[k], VAR_Y[k])
                             for k in range(2)], axis=-1)
  return score_y @ jnp.asarray(ROTATION.T, u.dtype)


# Compiled once per process: op-by-op, the kernel's few hundred small operations cost seconds per order.
marginal = jax.jit(perturbation_kernel.marginal, static_argnums=0)
augment = jax.jit(likelihood.augment_with_auxiliaries, static_argnums=(0, 3))


@functools.lru_cache(maxsize=None)
def marginal_constants(sde, t):
  """Per y coordinate: mean (n,) and lower Cholesky factor (n, n) of u_t, from perturbation_kernel.marginal, in
  float64 whatever the test's precision (the cache serves float32 and float64 tests)."""
  constants = []
  with jax.enable_x64(True):
    for k in range(2):
      phi, sigma = map(np.asarray, marginal(sde, jnp.asarray(t), sde_lib.initial_cov(sde, VAR_Y[k])))
      constants.append((phi[:, 0] * MEAN_Y[k], np.linalg.cholesky(sigma)))
  return constants


def gaussian_marginal_logp(sde, u, t):
  """log p_t(u) of the augmented state (batch, n, 2) at one time t with S_0 = diag(v_k, sigma^2, ...).

  jnp on u with host constants, so that it also serves as the exact prior at T inside the ODE's jit."""
  u_y = jnp.einsum("bnd,de->bne", u, jnp.asarray(ROTATION, u.dtype))
  total = 0.0
  for k, (mean, factor) in enumerate(marginal_constants(sde, t)):
    whitened = jax.scipy.linalg.solve_triangular(jnp.asarray(factor), (u_y[:, :, k] - mean).T, lower=True)
    total = total - 0.5 * jnp.sum(whitened**2, axis=0) - np.sum(np.log(np.diag(factor)))
  return total - 0.5 * u.shape[1] * u.shape[2] * np.log(2 * np.pi)


def data_marginal_logp(sde, x):
  """log p_eps(x) of the data block alone: (batch, 2) -> (batch,)."""
  y = np.asarray(x) @ ROTATION
  total = 0.0
  for k, (mean, factor) in enumerate(marginal_constants(sde, sde.eps)):
    var = (factor @ factor.T)[0, 0]
    total = total - 0.5 * (y[:, k] - mean[0])**2 / var - 0.5 * np.log(2 * np.pi * var)
  return total


def aux_posterior_kl(sde, x, aux_mean_coefficients, aux_cov):
  """KL(q(aux | x) || p_eps(aux | x)) per example in closed form; q = N(c x, aux_cov) per data coordinate.

  q is the same law in rotated coordinates (isotropic over coordinates), so the KL adds up over y_k."""
  y = np.asarray(x) @ ROTATION
  total = 0.0
  for k, (mean, factor) in enumerate(marginal_constants(sde, sde.eps)):
    sigma = factor @ factor.T
    post_cov = sigma[1:, 1:] - np.outer(sigma[1:, 0], sigma[1:, 0]) / sigma[0, 0]
    post_mean = mean[1:][None] + (y[:, k] - mean[0])[:, None] * (sigma[1:, 0] / sigma[0, 0])[None]
    diff = post_mean - y[:, k][:, None] * aux_mean_coefficients[None]
    inverse = np.linalg.inv(post_cov)
    total = total + 0.5 * (np.trace(inverse @ aux_cov) + np.einsum("bi,ij,bj->b", diff, inverse, diff)
                           - len(diff[0]) + np.log(np.linalg.det(post_cov) / np.linalg.det(aux_cov)))
  return total


def draw_data(num, seed=0):
  y = MEAN_Y + np.sqrt(VAR_Y) * np.random.default_rng(seed).standard_normal((num, 2))
  return y @ ROTATION.T


def example_keys(num, seed=0):
  return jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(jnp.arange(num))


@functools.lru_cache(maxsize=None)
def gaussian_solver(order, settings=SETTINGS):
  """(sde, jitted (u, probes) -> LogDensity) with the exact score and the exact prior p_T in place of N(0, I)."""
  sde = make_sde(order)
  marginal_constants(sde, sde.T)  # host constants, computed before the jit that uses them
  score_fn = lambda params, u, t: rotated_gaussian_score(sde, u, t)
  prior = lambda u_end: gaussian_marginal_logp(sde, u_end, sde.T)
  solve = jax.jit(lambda u, probes: likelihood.ode_log_density(sde, score_fn, None, u, probes, settings, prior))
  return sde, lambda u, probes: jax.tree.map(np.asarray, solve(u, probes))


def exact_probes(num):
  return jnp.broadcast_to(likelihood.exact_probes((2,), jnp.result_type(float)), (num, 2, 2))


@pytest.mark.float64  # the float64 tests' reference score, to 1e-7
def test_reference_score_is_exact_scores():
  sde = make_sde(3)
  u = jnp.asarray(np.random.default_rng(0).standard_normal((3, 3, 2)))
  t = jnp.asarray([sde.eps, 0.1, 1.0])
  both = jax.jit(lambda u, t: (rotated_gaussian_score(sde, u, t), rotated_score_by_exact_scores(sde, u, t)))
  mine, reference = both(u, t)
  np.testing.assert_allclose(mine, reference, rtol=1e-7)


def test_divergence_is_the_trace_of_the_full_jacobian():
  """The structured divergence -beta xi (D + tr ds/du_last) equals the trace of the whole drift's Jacobian,
  and Hutchinson averaged over all 2^D sign patterns is exactly that trace."""
  sde = make_sde(3)
  rng = np.random.default_rng(1)
  mixing = jnp.asarray(rng.standard_normal((3 * 3, 3)))  # (n D, D): the score sees every block

  def score_fn(params, u, t):
    return jnp.tanh(u.reshape(u.shape[0], -1) @ mixing) * (1.0 + t[:, None])

  signs = jnp.asarray(np.array(np.meshgrid(*[[-1.0, 1.0]] * 3)).reshape(3, -1).T)  # all 8 sign patterns

  @jax.jit
  def divergences(u, t):
    full_drift = lambda state: -sde_lib.probability_flow_drift(
        sde, state[None], t[None], score_fn(None, state[None], t[None]))[0]
    drift, exact = likelihood.drift_and_divergence(sde, score_fn, None, u, t, likelihood.exact_probes(
        (3,), u.dtype))
    _, all_signs = likelihood.drift_and_divergence(sde, score_fn, None, u, t, signs)
    _, one_sign = likelihood.drift_and_divergence(sde, score_fn, None, u, t, signs[:1])
    return drift, full_drift(u), exact, jnp.trace(jax.jacfwd(full_drift)(u).reshape(9, 9)), all_signs, one_sign

  drift, full_drift, exact, full_trace, all_signs, one_sign = divergences(
      jnp.asarray(rng.standard_normal((3, 3))), jnp.asarray(0.3))
  np.testing.assert_allclose(drift, full_drift, rtol=1e-12)
  np.testing.assert_allclose(exact, full_trace, rtol=1e-12)
  assert abs(float(exact)) > 1.0
  np.testing.assert_allclose(all_signs, exact, rtol=1e-12)
  assert abs(float(one_sign - exact)) > 1e-3  # one probe is an estimate, not the trace


@pytest.mark.float64  # solver tolerance 1e-7 and 1e-5 nats: float64 accuracy of the float64 path
@pytest.mark.parametrize("order", [1, 2, 3])
def test_ode_log_density_matches_the_gaussian_marginal_at_eps(order):
  """Exact trace, exact prior p_T substituted for N(0, I): log p_T(u_T) + int div f dt is log p_eps(u_eps).

  Then Hutchinson with two Rademacher probes per example: each estimate is off, their mean is within
  4 standard errors. The integral is 1.8 nats or more per example, so integrating backwards or flipping the
  divergence's sign would miss by twice that."""
  sde, solve = gaussian_solver(order)
  x = jnp.asarray(draw_data(NUM_EXAMPLES))
  u = augment(sde, x, example_keys(NUM_EXAMPLES), "initial")
  reference = np.asarray(gaussian_marginal_logp(sde, u, sde.eps))

  exact = solve(u, exact_probes(NUM_EXAMPLES))
  assert exact.solved.all()
  np.testing.assert_allclose(exact.log_density, reference, atol=1e-5, rtol=0)
  assert np.all(np.abs(exact.divergence_integral) > 1.5), exact.divergence_integral
  wrong_sign = exact.prior_log_density - exact.divergence_integral
  assert np.all(np.abs(wrong_sign - reference) > 3.0)

  hutchinson = likelihood.ODESettings(divergence="hutchinson", num_probes=2)
  probes = likelihood.divergence_probes(hutchinson, example_keys(NUM_EXAMPLES, seed=1), (2,), jnp.float64)
  assert probes.shape == (NUM_EXAMPLES, 2, 2) and set(np.unique(probes)) == {-1.0, 1.0}
  errors = solve(u, probes).log_density - reference
  standard_error = errors.std(ddof=1) / np.sqrt(NUM_EXAMPLES)
  assert errors.std() > 0.02, errors.std()  # the probes are random: the estimate is not the exact trace
  assert abs(errors.mean()) < 4 * standard_error, (errors.mean(), standard_error)


def test_ode_log_density_in_float32_at_the_default_tolerance_is_within_1e_3_nats():
  """As --mode=eval runs it: order 3, float32 state and integral, rtol = atol = 1e-5 (config.eval's defaults),
  against the float64 closed form. The integral's step control at 1e-5 on terms of about 7 nats leaves a few
  1e-4 (2.3e-4 measured); float32 round-off over ~100 steps adds ~1e-5. A wrong sign or direction of the
  divergence integral is over 3 nats off (see the float64 test above)."""
  sde, solve = gaussian_solver(3, likelihood.ODESettings(divergence="exact", rtol=1e-5, atol=1e-5))
  x = jnp.asarray(draw_data(NUM_EXAMPLES))
  u = augment(sde, x, example_keys(NUM_EXAMPLES), "initial")
  assert u.dtype == jnp.float32
  with jax.enable_x64(True):
    reference = np.asarray(gaussian_marginal_logp(sde, jnp.asarray(np.asarray(u, np.float64)), sde.eps))
  result = solve(u, exact_probes(NUM_EXAMPLES))
  assert result.log_density.dtype == np.float32 and result.solved.all()
  assert np.abs(result.divergence_integral).min() > 1.5
  np.testing.assert_allclose(result.log_density, reference, rtol=0, atol=1e-3)


@pytest.mark.float64  # closed-form KLs to 1e-4 nats and the entropy to 1e-12: float64 references
@pytest.mark.parametrize("aux_distribution", likelihood.AUX_DISTRIBUTIONS)
def test_bound_is_the_nll_plus_the_kl_of_the_auxiliaries(aux_distribution):
  """Per draw the bound is -log p(x, aux) - H[q]; over draws of aux from q it averages to
  -log p(x) + KL(q(aux | x) || p(aux | x)) >= -log p(x). Order 3, eps = 1e-3, exact trace and prior."""
  sde, solve = gaussian_solver(3)
  points, draws = 2, NUM_EXAMPLES // 2
  x = jnp.asarray(np.repeat(draw_data(points, seed=3), draws, axis=0))
  u = augment(sde, x, example_keys(NUM_EXAMPLES, seed=4), aux_distribution)
  np.testing.assert_array_equal(u[:, 0], x)
  entropy = float(likelihood.auxiliary_entropy(sde, 2, aux_distribution))
  bound = -solve(u, exact_probes(NUM_EXAMPLES)).log_density - entropy

  # q, written out again independently of likelihood.auxiliary_law: the auxiliaries are drawn from it and
  # its entropy is the one subtracted.
  if aux_distribution == "initial":
    coefficients, aux_cov = np.zeros(2), np.diag(sde.init_aux_var)
  else:
    phi, sigma = map(np.asarray, marginal(sde, jnp.asarray(sde.eps), sde_lib.initial_cov(sde, 0.0)))
    coefficients, aux_cov = phi[1:, 0], sigma[1:, 1:]
  assert entropy == pytest.approx(np.log(np.linalg.det(2 * np.pi * np.e * aux_cov)), rel=1e-12)  # D/2 = 1
  residual = np.moveaxis(np.asarray(u[:, 1:]) - coefficients[:, None] * np.asarray(x)[:, None], 1, -1)
  np.testing.assert_allclose(np.cov(residual.reshape(-1, 2).T), aux_cov, rtol=0.2, atol=0.2 * aux_cov[0, 0])

  # -log q(aux | x) - H[q] has mean zero under q: subtracting it (a control variate) leaves the KL's noise only.
  log_q = -0.5 * np.einsum("bdi,ij,bdj->b", residual, np.linalg.inv(aux_cov), residual) - entropy + 2.0
  nll = -data_marginal_logp(sde, x[::draws])
  gap = aux_posterior_kl(sde, x[::draws], coefficients, aux_cov)
  estimates = (bound + log_q + entropy).reshape(points, draws)
  means, errors = estimates.mean(axis=1), estimates.std(axis=1, ddof=1) / np.sqrt(draws)
  assert np.all(gap >= 0)
  np.testing.assert_array_less(np.abs(means - (nll + gap)), 4 * errors + 1e-4)
  np.testing.assert_array_less(np.abs(bound.reshape(points, draws).mean(axis=1) - (nll + gap)),
                               4 * bound.reshape(points, draws).std(axis=1) / np.sqrt(draws))
  if aux_distribution == "initial":  # the last block's noise by eps makes q loose: 0.17 nats per coordinate
    assert np.all(gap > 0.25)
    assert np.mean(means - nll) > 4 * np.sqrt(np.sum(errors**2)) / points
  else:  # the kernel's law at eps is nearly the posterior
    assert np.all(gap < 1e-3)


def cheap_score(params, u, t):
  """A smooth nonlinear score that compiles fast, for the plumbing tests."""
  return -u[:, -1] + 0.5 * jnp.tanh(u[:, 0]) * (1.0 - t[:, None])


def test_nll_bound_is_per_example_composes_its_parts_and_counts_its_evaluations():
  """nll_bound = -log p(state) - H[q], with fresh auxiliaries per example; example k's result depends on its
  key alone, not on the batch around it (the same batch shape, so one compile). The reported NFE is
  1 + stages x steps: the vmapped solve calls the network once per evaluation for the whole batch, as often
  as its slowest example needs, plus a re-evaluation of the first stage whenever the very first step is
  rejected (diffrax), so the count may be a few higher, never lower."""
  sde = make_sde(3)
  calls = []

  def counting_score(params, u, t):
    jax.debug.callback(lambda: calls.append(1))
    return cheap_score(params, u, t)

  x = jnp.asarray(draw_data(8, seed=5))
  keys = example_keys(8, seed=6)
  settings = likelihood.ODESettings(divergence="hutchinson", num_probes=1, rtol=1e-6, atol=1e-6)
  bound = jax.jit(lambda x, keys: likelihood.nll_bound(sde, counting_score, None, x, keys, settings))
  first = bound(x, keys)
  jax.effects_barrier()
  assert int(first.nfe.max()) <= len(calls) <= int(first.nfe.max()) + 4, (first.nfe, len(calls))
  assert int(first.nfe.min()) > 20
  others = jnp.concatenate([x[:4], jnp.asarray(draw_data(4, seed=7))])
  second = bound(others[::-1], jnp.concatenate([keys[:4], example_keys(4, seed=8)])[::-1])
  assert first.solved.all() and np.all(np.isfinite(first.nll_bound))
  np.testing.assert_allclose(second.nll_bound[::-1][:4], first.nll_bound[:4], rtol=1e-9)
  np.testing.assert_allclose(first.nll_bound, -first.joint_log_density - likelihood.auxiliary_entropy(sde, 2),
                             rtol=1e-12)
  assert len(np.unique(np.round(np.asarray(first.state[:, 1:]), 6))) == 32  # fresh auxiliaries per example


def test_bits_per_dim_of_a_uniform_density_is_the_bits_of_the_levels():
  """Uniform on [-1, 1]^D has nll = D log 2 in model space: 8 bits/dim for 256 levels, log2 17 for digits."""
  num_coords = 3072
  assert likelihood.bits_per_dim(num_coords * np.log(2), num_coords) == pytest.approx(8.0, abs=1e-12)
  assert likelihood.bits_per_dim(num_coords * np.log(2), num_coords, 17) == pytest.approx(np.log2(17), abs=1e-12)
  # The offset is the pipeline's scale: to_model_space maps k + U to (k + U) / 128 - 1, Jacobian 128^-D.
  pixels = np.array([[0, 17, 255]], np.uint8)
  noise = np.array([[0.25, 0.5, 0.999]], np.float32)
  np.testing.assert_allclose(image_data.to_model_space(pixels, 256, noise), (pixels + noise) / 128.0 - 1.0,
                             rtol=1e-6)
  nll_model_space = 1234.5
  pixel_space_nll = nll_model_space + num_coords * np.log(128.0)
  assert likelihood.bits_per_dim(nll_model_space, num_coords) == pytest.approx(
      pixel_space_nll / (num_coords * np.log(2)), rel=1e-12)


def test_bad_settings_name_the_field():
  with pytest.raises(ValueError, match="eval.divergence"):
    likelihood.ODESettings(divergence="trace")
  with pytest.raises(ValueError, match="eval.solver"):
    likelihood.ODESettings(solver="rk4")
  with pytest.raises(ValueError, match="eval.ode_rtol"):
    likelihood.ODESettings(rtol=0.0)
  with pytest.raises(ValueError, match="eval.aux_distribution"):
    likelihood.auxiliary_law(make_sde(3), "posterior", jnp.float64)
  with pytest.raises(ValueError, match="sde.init_aux_var"):
    likelihood.auxiliary_entropy(make_sde(3, init_aux_var=0.0), 2)
  config = default.get_config()
  config_checks.check_eval(config.eval)  # the defaults pass
  for field, value in (("divergence", "trace"), ("aux_distribution", "posterior"), ("num_examples", 0),
                       ("num_probes", 0), ("batch_size", 0), ("ode_atol", -1.0)):
    bad = default.get_config().eval
    bad[field] = value
    with pytest.raises(ValueError, match=f"eval.{field}"):
      config_checks.check_eval(bad)


@pytest.mark.slow
def test_eval_mode_end_to_end_from_the_command_line(tmp_path):
  """Train toy2d:local for 20 steps, then --mode=eval: a JSON report with a finite bound, its standard error,
  the NFE and the checkpoint step. stdout says the bound in nats per point, then the report's path, then the
  toy's other default metric (SW1, hold_jax/evaluation/point_quality.py) beside its baselines and its report's path."""
  base = [sys.executable, "-m", "hold_jax.main", "--config", "configs/toy2d.py:local", "--workdir", str(tmp_path)]
  trained = subprocess.run(base + ["--config.training.num_steps=20"], cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
  assert trained.returncode == 0, trained.stderr[-3000:]
  evaluated = subprocess.run(base + ["--mode=eval", "--config.eval.num_examples=12", "--config.eval.batch_size=8",
                                     "--config.eval.ode_rtol=1e-3", "--config.eval.ode_atol=1e-3"],
                             cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  lines = evaluated.stdout.strip().splitlines()
  first = next(index for index, line in enumerate(lines) if line.startswith("nll_bound "))
  assert re.fullmatch(r"nll_bound -?[0-9.]+ \+- [0-9.]+ nats per point \(12 points, mean NFE [0-9]+, checkpoint "
                      r"step 20\)", lines[first]), lines[first]
  assert lines[first + 2].startswith("point quality: 256 samples") and lines[first + 3].startswith("sw1 ")
  assert "(held-out points " in lines[first + 3] and "_points_" in lines[-1]
  path = lines[first + 1]
  assert os.path.dirname(path) == str(tmp_path / "eval")
  assert re.fullmatch(r"nll_generated_kernel_exact_ckpt20_[0-9a-f]{8}\.json", os.path.basename(path))
  report = json.load(open(path))
  assert nll_rounds.report_stem(report["hashed_settings"]) + ".json" == os.path.basename(path)
  assert report["num_examples"] == 12 and report["checkpoint_step"] == 20 and report["num_dims"] == 2
  for field in ("nll_bound_nats", "nll_bound_nats_stderr", "nll_bound_nats_per_dim", "nfe_mean", "aux_entropy_nats"):
    assert np.isfinite(report[field]) and report[field] != 0, (field, report[field])
  assert report["nll_bound_nats_stderr"] > 0 and report["nfe_max"] >= report["nfe_mean"] > 20
  assert report["settings"]["divergence_used"] == "exact" and "bits_per_dim" not in report
