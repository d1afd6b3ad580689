"""The denoiser parametrisation in the system: its training objective does not depend on the process, its score
function with the ideal network is the exact score, a denoiser workdir is sampled with any process, and a
workdir trained with the score parametrisations before the denoiser existed still samples."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hold_jax import models
from hold_jax.configs import toy2d
from hold_jax.evaluation import nll_rounds
from hold_jax.models import denoiser
from hold_jax.process import exact_scores
from hold_jax.process import kernel_table
from hold_jax.process import sde as sde_lib
from hold_jax.sampling import sample_job
from hold_jax.training import train
from hold_jax.workdir import run_record
from hold_jax.workdir import trained_model
from test_fault_tolerance import local_config
from test_sde import make_sde


def toy_loss(order, time_sampling):
  config = toy2d.get_config("local")
  config.sde.order = order
  config.loss.time_sampling = time_sampling
  model = models.create_model(config.model, (2,))
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1, 2)), jnp.ones((1,)))["params"]
  loss_fn = train.make_training_loss_fn(sde_lib.from_config(config.sde), model, config.loss)
  x0 = jax.random.normal(jax.random.PRNGKey(1), (64, 2))
  return float(loss_fn(params, x0, jax.random.PRNGKey(2)))


def test_the_denoisers_training_does_not_depend_on_the_process():
  """With log-normal noise levels the loss draws x0_gls = x_0 + sigma n directly: orders 1 and 3 give one loss
  (so one trained network serves every process); through training times the processes differ."""
  assert toy_loss(1, "log_normal") == toy_loss(3, "log_normal")
  assert toy_loss(1, "log_uniform") != toy_loss(3, "log_uniform")


@pytest.mark.parametrize("order", (1, 2, 3))
def test_the_score_of_the_ideal_denoiser_is_exact(order):
  """Gaussian data N(0.2, 0.3): a network returning the ideal F = (D - c_skip x) / c_out (with the input scaling
  undone) gives, through denoiser.score_fn in float32, the exact last-block score at every t."""
  sde = make_sde(order)
  mean, var, sigma_data = 0.2, 0.3, 0.5
  seen = {}

  def ideal_network(params, inputs, sigma):
    seen["blocks"] = inputs.shape[1]
    total = sigma[:, None] ** 2 + sigma_data**2
    x = inputs[:, 0] * jnp.sqrt(total)
    ideal = mean + var / (var + sigma[:, None] ** 2) * (x - mean)
    return (ideal - sigma_data**2 / total * x) / (sigma[:, None] * sigma_data / jnp.sqrt(total))

  rng = np.random.default_rng(0)
  t = np.geomspace(sde.eps, sde.T, 40).astype(np.float32)
  with jax.enable_x64(True):
    phi, factor = (np.asarray(v) for v in kernel_table.bcsm_kernel(sde, jnp.asarray(t, jnp.float64)))
    x0 = mean + np.sqrt(var) * rng.standard_normal((len(t), 3))
    u = phi[:, :, None] * x0[:, None] + np.einsum("bij,bjd->bid", factor, rng.standard_normal((len(t), order, 3)))
    exact = np.asarray(exact_scores.gaussian_score(sde, jnp.asarray(u), jnp.asarray(t, jnp.float64), mean, var))
  score = denoiser.score_fn(sde, ideal_network, sigma_data)(None, jnp.asarray(u, jnp.float32), jnp.asarray(t))
  assert seen["blocks"] == 1 and score.dtype == jnp.float32
  assert np.max(np.abs(score - exact) * factor[:, -1, -1, None]) < 2e-3


@pytest.fixture
def denoiser_record(tmp_path):
  """A workdir whose record says: an order-1 denoiser on a linear VP schedule."""
  config = toy2d.get_config("local")
  config.sde.order, config.sde.beta_schedule, config.sde.beta_0, config.sde.beta_1 = 1, "linear", 0.1, 20.0
  run_record.write(tmp_path, config)
  return tmp_path


def test_a_denoiser_is_sampled_with_the_process_the_command_line_gives(denoiser_record):
  given = toy2d.get_config("local")  # the config file's process: HOLD, constant beta 6.5
  recorded = run_record.for_inference(denoiser_record, given, {})
  assert (recorded.sde.order, recorded.sde.beta_schedule, recorded.sde.beta_1) == (1, "linear", 20.0)
  given.sde.order = 3
  chosen = run_record.for_inference(denoiser_record, given, {"sde.order": 3})
  assert (chosen.sde.order, chosen.sde.beta_schedule, chosen.sde.beta_1) == (3, "linear", 20.0)
  stems = {sample_job.sample_file_stem(config, 40) for config in (recorded, chosen)}
  assert len(stems) == 2  # the process is part of a denoiser's sample names, reports and round folders
  reports = {nll_rounds.report_stem(nll_rounds.report_settings(config, 40, (2,))) for config in (recorded, chosen)}
  assert len(reports) == 2
  assert len({nll_rounds.rounds_folder(config, 40, "nll") for config in (recorded, chosen)}) == 2


def test_a_score_networks_process_stays_trained(tmp_path):
  config = toy2d.get_config("local")
  config.loss.parametrization, config.loss.weighting = "eps", "eps"
  run_record.write(tmp_path, config)
  given = toy2d.get_config("local")
  given.sde.order = 2
  with pytest.raises(run_record.RecordMismatch, match="sde.order: trained with 3, given 2"):
    run_record.for_inference(tmp_path, given, {"sde.order": 2})


def test_hold_samples_from_a_denoiser_trained_with_order_3_under_vp_and_cld(trained_workdir):
  workdir, config, _ = trained_workdir
  params, _ = trained_model.load_ema_params(config, str(workdir), (2,))
  for order in (1, 2):
    given = toy2d.get_config("local")
    given.sde.order = order
    chosen = run_record.for_inference(workdir, given, {"sde.order": order})
    chosen.sampling.num_samples = chosen.sampling.batch_size = 64
    samples = sample_job.draw(chosen, params, (2,))
    assert samples.shape == (64, 2) and np.all(np.isfinite(samples))


def test_a_workdir_of_a_score_network_from_before_the_denoiser_still_samples(tmp_path):
  """Trained with 'eps' (the former default), its record without the denoiser's fields: sampled with today's
  config, the record decides the parametrisation and the network's input blocks."""
  config = local_config(num_steps=20, checkpoint_every=20)
  config.loss.parametrization, config.loss.weighting, config.loss.time_sampling = "eps", "eps", "log_uniform"
  train.train(config, str(tmp_path))
  record = json.loads((tmp_path / "config.json").read_text())
  for field in ("sigma_data", "log_sigma_mean", "log_sigma_std"):
    del record["loss"][field]
  (tmp_path / "config.json").write_text(json.dumps(record))
  chosen = run_record.for_inference(tmp_path, toy2d.get_config("local"), {})
  assert chosen.loss.parametrization == "eps"
  params, step = trained_model.load_ema_params(chosen, str(tmp_path), (2,))
  chosen.sampling.num_samples = chosen.sampling.batch_size = 64
  assert step == 20 and np.all(np.isfinite(sample_job.draw(chosen, params, (2,))))
