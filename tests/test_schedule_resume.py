"""The learning-rate schedule's horizon belongs to the run: recorded in config.json when it starts and kept on
resume, so a command's training.num_steps never changes the learning rate of a step already planned."""
import json
import shutil

import jax
import numpy as np
import optax
import pytest
from clu import metric_writers

from hold_jax import console
from hold_jax.configs import toy2d
from hold_jax.training import optimization
from hold_jax.training import train
from hold_jax.workdir import run_record

HORIZON = 40
LEARNING_RATE = 1e-3  # toy2d's
WARMUP = 10  # toy2d:local's


def local_config(schedule, **training):
  config = toy2d.get_config("local")
  config.checkpoint.asynchronous = False
  config.checkpoint.keep = 10
  config.optim.schedule = schedule
  for key, value in dict(dict(checkpoint_every=10, log_every=5), **training).items():
    config.training[key] = value
  return config


def flat(tree):
  return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])


def schedule_lines(said):
  return [line for line in said if line.startswith("training.num_steps = ")]


class Interrupted(Exception):
  """Stands for a crash after a checkpoint: the run ends there and a later command resumes it."""


def capture(params_by_step, interrupt_at=None):
  """A train callback that keeps a copy of the parameters after every step (and crashes at interrupt_at)."""

  def callback(step, state, writer):
    del writer
    params_by_step[step] = flat(state.params)  # a host copy: the state is donated to the next step
    if step == interrupt_at:
      raise Interrupted()

  return callback


def record(workdir):
  return json.loads((workdir / run_record.RECORD_NAME).read_text())


@pytest.fixture
def said(monkeypatch):
  """The console lines of the train() calls of a test."""
  lines = []
  monkeypatch.setattr(console, "say", lines.append)
  return lines


@pytest.fixture
def logged(monkeypatch):
  """{step: scalars} written by the train() calls of a test (the learning rate among them)."""
  scalars = {}
  create = metric_writers.create_default_writer

  def create_recording(*args, **kwargs):
    writer = create(*args, **kwargs)
    write = writer.write_scalars

    def write_scalars(step, values):
      scalars[int(step)] = dict(values)
      write(step, values)

    writer.write_scalars = write_scalars
    return writer

  monkeypatch.setattr(metric_writers, "create_default_writer", create_recording)
  return scalars


@pytest.fixture(scope="module")
def cosine_runs(tmp_path_factory):
  """A cosine run of HORIZON steps, uninterrupted; and the same run crashed after its checkpoint of step 20."""
  root = tmp_path_factory.mktemp("cosine")
  uninterrupted = {}
  train.train(local_config("cosine", num_steps=HORIZON), str(root / "uninterrupted"),
              callbacks=[capture(uninterrupted)])
  with pytest.raises(Interrupted):
    train.train(local_config("cosine", num_steps=HORIZON), str(root / "interrupted"),
                callbacks=[capture({}, interrupt_at=20)])
  return root, uninterrupted


def interrupted_copy(cosine_runs, tmp_path):
  root, _ = cosine_runs
  copy = tmp_path / "run"
  shutil.copytree(root / "interrupted", copy)
  assert sorted(int(name.name) for name in (copy / "checkpoints").iterdir()) == [10, 20]
  return copy


def test_the_horizon_is_recorded_as_a_number(cosine_runs, tmp_path):
  root, _ = cosine_runs
  for name in ("uninterrupted", "interrupted"):
    horizon = record(root / name)["optim"]["schedule_horizon"]
    assert horizon == HORIZON and isinstance(horizon, int)
  # A new run: the given horizon, else the training length (a workdir without checkpoints has no run yet).
  planned = local_config("cosine", num_steps=30)
  assert run_record.with_schedule_horizon(planned, tmp_path).optim.schedule_horizon == 30
  planned.optim.schedule_horizon = 100
  assert run_record.with_schedule_horizon(planned, tmp_path).optim.schedule_horizon == 100
  assert run_record.with_schedule_horizon(planned, root / "interrupted").optim.schedule_horizon == 100  # given
  assert planned.optim.schedule_horizon == 100 and local_config("cosine").optim.schedule_horizon is None


def test_an_interrupted_cosine_run_resumed_repeats_the_uninterrupted_run(cosine_runs, tmp_path, said):
  _, uninterrupted = cosine_runs
  copy = interrupted_copy(cosine_runs, tmp_path)
  resumed = train.train(local_config("cosine", num_steps=HORIZON), str(copy))
  assert int(resumed.step) == HORIZON
  np.testing.assert_array_equal(flat(resumed.params), uninterrupted[HORIZON])
  assert not schedule_lines(said)  # nothing to say: the length is the horizon


def test_a_cosine_run_refuses_to_train_past_its_recorded_horizon(cosine_runs, tmp_path):
  copy = interrupted_copy(cosine_runs, tmp_path)
  before = (copy / run_record.RECORD_NAME).read_text()
  with pytest.raises(ValueError, match=rf"^training.num_steps = 80 is past the cosine schedule's horizon of 40 steps "
                     rf"\(recorded in {copy}/config.json\): the learning rate is 0 from step 40 on, so those steps "
                     r"would change nothing. To train longer, start a new run \(a new --workdir\) with "
                     r"training.num_steps = 80: a longer horizon here would change the learning rate of the steps "
                     r"already planned.$"):
    train.train(local_config("cosine", num_steps=80), str(copy))
  # Stretching the horizon instead would change the learning rate of steps already planned: a trained field.
  stretched = local_config("cosine", num_steps=80)
  stretched.optim.schedule_horizon = 80
  with pytest.raises(run_record.RecordMismatch, match=r"optim.schedule_horizon: trained with 40, given 80"):
    train.train(stretched, str(copy))
  assert (copy / run_record.RECORD_NAME).read_text() == before
  assert sorted(int(name.name) for name in (copy / "checkpoints").iterdir()) == [10, 20]


def test_a_cosine_run_resumed_with_fewer_steps_keeps_its_schedule(cosine_runs, tmp_path, said, logged):
  _, uninterrupted = cosine_runs
  copy = interrupted_copy(cosine_runs, tmp_path)
  resumed = train.train(local_config("cosine", num_steps=30), str(copy))
  assert int(resumed.step) == 30
  # Steps 20..30 are those of the full run: the same learning rates, the same parameters, bit for bit.
  np.testing.assert_array_equal(flat(resumed.params), uninterrupted[30])
  recorded_schedule = optax.warmup_cosine_decay_schedule(0.0, LEARNING_RATE, WARMUP, HORIZON)
  assert sorted(logged) == [25, 30]
  for step, scalars in logged.items():  # logged after step `step` - 1, whose update it scaled
    assert scalars["learning_rate"] == pytest.approx(float(recorded_schedule(step - 1)), rel=1e-6)
  assert float(recorded_schedule(29)) > 1e-5  # a schedule ending at 30 would be about 0 there
  assert any(line.startswith("training.num_steps = 30 stops the cosine schedule early: the learning rate keeps "
                             "the horizon of 40 steps (recorded in") for line in said), said
  assert record(copy)["optim"]["schedule_horizon"] == HORIZON


def test_a_constant_run_extends_at_its_rate_and_says_so(tmp_path, said):
  short, full = {}, {}
  train.train(local_config("constant", num_steps=20), str(tmp_path / "extended"), callbacks=[capture(short)])
  assert not schedule_lines(said)  # a fresh run: the length is the horizon
  extended = train.train(local_config("constant", num_steps=HORIZON), str(tmp_path / "extended"))
  assert any(line.startswith(f"training.num_steps = 40 differs from the 20 steps this run started with (recorded "
                             f"in {tmp_path}/extended/config.json): training extends to step 40, at the same "
                             "constant learning rate 0.001") for line in said), said
  assert record(tmp_path / "extended")["optim"]["schedule_horizon"] == 20  # the record is never rewritten
  reference = train.train(local_config("constant", num_steps=HORIZON), str(tmp_path / "uninterrupted"),
                          callbacks=[capture(full)])
  np.testing.assert_array_equal(short[20], full[20])  # the steps up to the old length
  np.testing.assert_array_equal(flat(extended.params), flat(reference.params))  # and the ones past it


def test_a_record_without_a_horizon_takes_its_training_length(cosine_runs, tmp_path):
  # A record written before the horizon was recorded: the run's schedule ended at its recorded num_steps.
  copy = interrupted_copy(cosine_runs, tmp_path)
  older = record(copy)
  del older["optim"]["schedule_horizon"]
  (copy / run_record.RECORD_NAME).write_text(json.dumps(older, indent=2))
  with pytest.raises(ValueError, match=r"training.num_steps = 80 is past the cosine schedule's horizon of 40 steps"):
    train.train(local_config("cosine", num_steps=80), str(copy))
  stretched = local_config("cosine", num_steps=80)
  stretched.optim.schedule_horizon = 80
  with pytest.raises(run_record.RecordMismatch, match=r"optim.schedule_horizon: trained with 40, given 80"):
    train.train(stretched, str(copy))
  resolved = run_record.with_schedule_horizon(local_config("cosine", num_steps=30), copy)
  assert resolved.optim.schedule_horizon == HORIZON
  assert optimization.check_training_length(resolved.optim, 30, "config.json").startswith(
      "training.num_steps = 30 stops the cosine schedule early")
