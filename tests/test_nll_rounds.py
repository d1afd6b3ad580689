"""Round files and the rounds driver (hold_jax/evaluation/round_files.py), and the NLL bound computed in resumable
rounds (hold_jax/evaluation/nll_rounds.py)."""
import json
import os

import numpy as np
import pytest

from hold_jax.configs import toy2d
from hold_jax.evaluation import nll_rounds
from hold_jax.evaluation import round_files
from hold_jax.training import train


def test_round_files_are_used_only_when_whole_and_unchanged(tmp_path):
  arrays = {"values": np.arange(12, dtype=np.float32).reshape(3, 4), "count": np.asarray(7)}
  path = tmp_path / "round.npz"
  round_files.write(path, arrays)
  found = round_files.read(path, ("values", "count"), 3)
  assert int(found["count"]) == 7 and np.array_equal(found["values"], arrays["values"])
  assert round_files.read(tmp_path / "absent.npz", ("values", "count"), 3) is None
  assert round_files.read(path, ("values", "count"), 4) is None  # another number of rows
  assert round_files.read(path, ("values",), 3) is None  # other names
  with np.load(path) as archive:
    stored = dict(archive)
  stored["values"][1, 2] += 1  # a changed number keeps the shape but not the checksum
  np.savez(path, **stored)
  assert round_files.read(path, ("values", "count"), 3) is None
  round_files.write(path, arrays)
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])  # a truncated file
  assert round_files.read(path, ("values", "count"), 3) is None
  with pytest.raises(ValueError, match="sha256"):
    round_files.write(path, {"sha256": np.zeros(2)})


def test_rounds_are_computed_once_and_resumed_where_a_file_is_missing_or_wrong(tmp_path):
  computed, progress = [], []

  def compute(first, last):
    computed.append((first, last))
    return {"indices": np.arange(first, last), "squares": np.arange(first, last) ** 2.0}

  def run():
    computed.clear()
    progress.clear()
    found = round_files.in_rounds(tmp_path, "round", 11, 5, ("indices", "squares"), compute,
                                  lambda arrays, r, n, last, done: progress.append((r, n, last, done)))
    return np.concatenate([arrays["squares"] for arrays in found])

  expected = np.arange(11) ** 2.0
  np.testing.assert_array_equal(run(), expected)
  assert computed == [(0, 5), (5, 10), (10, 11)]
  assert progress == [(0, 3, 5, 1), (1, 3, 10, 2), (2, 3, 11, 3)]
  np.testing.assert_array_equal(run(), expected)
  assert computed == []  # every round read from its file
  os.remove(tmp_path / "round1.npz")
  round_files.write(tmp_path / "round2.npz", {"indices": np.arange(9, 10), "squares": np.zeros(1)})  # other items
  np.testing.assert_array_equal(run(), expected)
  assert computed == [(5, 10), (10, 11)]
  assert progress[-1] == (2, 3, 11, 2)


def nll_config():
  config = toy2d.get_config("local")
  config.training.num_steps = 4
  config.training.checkpoint_every = 4
  config.eval.num_examples = 11  # rounds of 5, 5 and 1
  config.eval.round_size = 5
  config.eval.batch_size = 4  # the rounds' batches are padded and cut back
  config.eval.ode_rtol = config.eval.ode_atol = 1e-3
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("toy")
  config = nll_config()
  train.train(config, str(workdir))
  return workdir, config


def test_the_bound_resumes_at_its_first_missing_round_with_the_same_numbers(trained, monkeypatch):
  workdir, config = trained
  path = nll_rounds.evaluate(config, str(workdir))
  report = json.load(open(path))
  rounds_dir = workdir / "eval" / report["rounds"]
  assert sorted(os.listdir(rounds_dir)) == ["round0.npz", "round1.npz", "round2.npz"]
  assert report["num_examples"] == 11 and np.isfinite(report["nll_bound_nats"])

  bounded = []
  original = nll_rounds.bound_examples
  monkeypatch.setattr(nll_rounds, "bound_examples",
                      lambda bound, params, examples, positions, *rest: bounded.append(
                          list(examples.indices[positions])) or original(bound, params, examples, positions, *rest))
  os.remove(rounds_dir / "round1.npz")  # killed before the second round was written
  data = (rounds_dir / "round2.npz").read_bytes()
  (rounds_dir / "round2.npz").write_bytes(data[:-40] + bytes(40))  # and the last one damaged
  resumed = json.load(open(nll_rounds.evaluate(config, str(workdir))))
  assert bounded == [[5, 6, 7, 8, 9], [10]]  # only the missing and the damaged round
  for field in ("nll_bound_nats", "nll_bound_nats_stderr", "nfe_mean", "nfe_max"):
    assert resumed[field] == report[field], field

  bounded.clear()
  one_round = config.copy_and_resolve_references()
  one_round.eval.round_size = 100  # other rounds, other files: the per-example bounds are the same
  whole = json.load(open(nll_rounds.evaluate(one_round, str(workdir))))
  assert bounded == [list(range(11))] and whole["rounds"] != report["rounds"]
  np.testing.assert_allclose(whole["nll_bound_nats"], report["nll_bound_nats"], rtol=1e-5)
