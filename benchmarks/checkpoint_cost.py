"""The cost of checkpoint checksums: computing them at save and verifying them at restore, against the save and
restore they protect.

  python benchmarks/checkpoint_cost.py [--configs digits cifar10:local] [--rounds 5] [--output FILE]

For each config: the train state of its model is built (one jitted init), saved synchronously with orbax as
training saves it, and restored whole as a resumed run does. Reported per round (medians): save seconds,
restore seconds, checksum seconds (the jitted sums on the devices plus the transfer of the sums), and the
checksum's fraction of save and of restore. Target: under 5%.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
from etils import epath  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from benchmarks import common  # noqa: E402
from hold_jax import models  # noqa: E402
from hold_jax import multihost  # noqa: E402
from hold_jax.data import input_pipeline  # noqa: E402
from hold_jax.process import sde as sde_lib  # noqa: E402
from hold_jax.training import optimization  # noqa: E402
from hold_jax.training import train  # noqa: E402
from hold_jax.workdir import checkpoint_integrity  # noqa: E402
from hold_jax.workdir import checkpoint_restore  # noqa: E402
from hold_jax.workdir import checkpoints  # noqa: E402
from hold_jax.workdir import trained_model  # noqa: E402


def measure(config_name: str, rounds: int) -> dict:
  config = common.load_config(config_name)
  data_shape = input_pipeline.data_shape(config.data)
  model = models.create_model(config.model, data_shape)
  optimizer = optimization.make_optimizer(config.optim, config.training.num_steps)
  order = trained_model.input_blocks(sde_lib.from_config(config.sde).order, config.loss.parametrization)
  replicated = NamedSharding(multihost.make_mesh(), PartitionSpec())
  make_state = lambda: train.init_state(model, data_shape, order, optimizer, config.seed)
  state = jax.device_put(make_state(), replicated)
  abstract = train.abstract_state(make_state, replicated)
  checkpoint_integrity.checksums(state)  # compile once, outside the timings
  times = {"save": [], "restore": [], "checksum": []}
  with tempfile.TemporaryDirectory() as scratch:
    for round_index in range(rounds + 1):  # round 0 warms up orbax and the file system
      directory = os.path.join(scratch, f"round{round_index}")
      manager = checkpoints.make_manager(epath.Path(directory), keep=1, asynchronous=False)
      started = time.perf_counter()
      checkpoints.save(manager, 1, state)  # includes one checksum computation
      checkpoints.wait(manager, 1)
      save = time.perf_counter() - started
      started = time.perf_counter()
      restored = checkpoint_restore.restore(manager, abstract)  # includes one checksum verification
      jax.block_until_ready(restored.tree)
      restore = time.perf_counter() - started
      started = time.perf_counter()
      checkpoint_integrity.checksums(restored.tree)
      checksum = time.perf_counter() - started
      manager.close()
      shutil.rmtree(directory)
      if round_index:
        times["save"].append(save)
        times["restore"].append(restore)
        times["checksum"].append(checksum)
  median = {name: statistics.median(values) for name, values in times.items()}
  return dict(config=config_name, parameters=int(sum(x.size for x in jax.tree.leaves(state.params))),
              state_mib=round(checkpoints.state_bytes(abstract) / 2**20, 2),
              save_s=round(median["save"], 4), restore_s=round(median["restore"], 4),
              checksum_s=round(median["checksum"], 5),
              checksum_fraction_of_save=round(median["checksum"] / median["save"], 4),
              checksum_fraction_of_restore=round(median["checksum"] / median["restore"], 4))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", nargs="+", default=["digits", "cifar10:local"])
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "checkpoint_cost.json"))
  args = parser.parse_args()
  rows = []
  print("config | parameters | state MiB | save s | restore s | checksum s | of save | of restore")
  for name in args.configs:
    result = measure(name, args.rounds)
    rows.append(result)
    print(" | ".join(str(result[key]) for key in ("config", "parameters", "state_mib", "save_s", "restore_s",
                                                  "checksum_s", "checksum_fraction_of_save",
                                                  "checksum_fraction_of_restore")))
  common.write_results(args.output, rows, rounds=args.rounds)


if __name__ == "__main__":
  main()
