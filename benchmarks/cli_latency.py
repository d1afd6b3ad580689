"""How soon the command line answers: `hold-jax --help` and a command with a mistyped config field, against the
imports a job pays before its first step.

  python benchmarks/cli_latency.py [--rounds 5] [--output FILE]

Each command runs as a fresh `python -m hold_jax.main ...` process (as `hold-jax` does) from the repository
root; reported: the median wall time over the rounds, and its exit status. Targets on a 2-core CPU: --help
<= 3 s, a bad-field error <= 5 s. The reference row imports TensorFlow and JAX, what every job pays first.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import common  # noqa: E402

COMMANDS = (
    ("--help", ["-m", "hold_jax.main", "--help"], 3.0),
    ("bad config field", ["-m", "hold_jax.main", "--config", "configs/toy2d.py", "--workdir", "unused",
                          "--config.training.num_stepz=3"], 5.0),
    ("reference: import tensorflow, jax", ["-c", "import tensorflow, jax"], None),
)


def measure(arguments, rounds):
  """(median seconds, exit status) of `python ARGUMENTS` run `rounds` times from the repository root."""
  seconds, status = [], None
  for _ in range(rounds):
    start = time.perf_counter()
    status = subprocess.run([sys.executable, *arguments], cwd=ROOT, capture_output=True, check=False).returncode
    seconds.append(time.perf_counter() - start)
  return statistics.median(seconds), status


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "cli_latency.json"))
  args = parser.parse_args()
  rows = []
  print("| command | seconds (median) | exit status | target |")
  print("|---|---|---|---|")
  for name, arguments, target in COMMANDS:
    seconds, status = measure(arguments, args.rounds)
    verdict = "-" if target is None else f"<= {target:g} s: {'met' if seconds <= target else 'NOT met'}"
    print(f"| {name} | {seconds:.2f} | {status} | {verdict} |")
    rows.append(dict(command=name, seconds=seconds, exit_status=status, target_seconds=target))
  common.write_results(args.output, rows, rounds=args.rounds)


if __name__ == "__main__":
  main()
