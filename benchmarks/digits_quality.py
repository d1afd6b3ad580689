"""Sample quality against network evaluations on the digits: the digits classifier's Fréchet distance, KID and
IS of trained digits workdirs, for several samplers at several NFE, with the real-vs-real and noise baselines.

  python benchmarks/digits_quality.py --workdirs W1 W3 [--sweep ENTRY ...] [--num_samples 2000]
      [--processes vp cld hold]

Each workdir (trained with configs/digits.py, any order) is evaluated as `--mode=eval` does with
eval.sampler_sweep = the entries (hold_jax/evaluation/image_quality.py): the same rounds and reports in W/eval, so a
rerun reads what is already there. The process of each row is read from the workdir's config.json, or for a denoiser
workdir taken from --processes (common.STOCK_PROCESSES): one network sampled with each.
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import common  # noqa: E402
from hold_jax.evaluation import image_quality  # noqa: E402
from hold_jax.workdir import run_record  # noqa: E402

DEFAULT_SWEEP = tuple(f"{method}:quadratic:{steps}" for method in ("lie_trotter", "euler_maruyama", "ddim")
                      for steps in (20, 50, 100, 200)) + tuple(f"ode_heun:quadratic:{steps}"
                                                               for steps in (10, 25, 50, 100))
METRICS = ("fd_digits", "kid_digits", "is_digits")


def describe_process(sde) -> str:
  schedule = (f"beta {sde.beta_0:g}" if sde.beta_schedule == "constant"
              else f"{sde.beta_schedule} beta {sde.beta_0:g} -> {sde.beta_1:g}")
  return f"order {sde.order}, {schedule}, eps {sde.eps:g}"


def evaluate_workdir(workdir: str, sweep, num_samples: int, batch_size: int, process=None,
                     sampling_fields=(), num_repeats: int = 1) -> dict:
  config = common.with_process(run_record.load_config(workdir), process)
  for field, value in sampling_fields:
    group, _, name = field.rpartition(".")
    if group not in ("", "sampling", "sde") or (group == "sde" and config.loss.parametrization != "denoiser"):
      raise SystemExit(f"--set {field}: give a config.sampling field, or sde.FIELD for a denoiser workdir (whose "
                       "process is a sampling setting, docs/denoiser.md).")
    settings = config[group or "sampling"]
    settings[name] = type(settings[name])(value)
  config.eval.metrics = ("fid", "kid", "is")
  config.eval.feature_network = "digits"
  config.eval.num_samples = num_samples
  config.eval.num_repeats = num_repeats  # sampling seeds seed, seed + 1, ...: each row reports their mean and min
  config.eval.sampler_sweep = tuple(sweep)
  config.sampling.batch_size = batch_size  # sample k depends on (seed, k) only: any batch size gives the same
  with open(image_quality.evaluate_quality(config, workdir)) as file:
    table = json.load(file)
  with open(os.path.join(workdir, "eval", table["rows"][0]["report"])) as file:
    baselines = json.load(file)["baselines"]
  return dict(workdir=workdir, process=describe_process(config.sde), order=config.sde.order,
              parametrization=config.loss.parametrization, seed=int(config.seed),
              checkpoint_step=table["checkpoint_step"], rows=table["rows"], baselines=baselines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdirs", nargs="+", required=True)
  parser.add_argument("--sweep", nargs="+", default=list(DEFAULT_SWEEP), help="method:grid:num_steps entries")
  parser.add_argument("--num_samples", type=int, default=2000)
  parser.add_argument("--batch_size", type=int, default=500)
  parser.add_argument("--num_repeats", type=int, default=1, help="sampling seeds per row (eval.num_repeats)")
  parser.add_argument("--processes", nargs="+", default=[None], choices=[None, *common.STOCK_PROCESSES],
                      help="for denoiser workdirs: sample each with these processes")
  parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                      help="config.sampling fields for every row, e.g. stochasticity=1; for denoiser "
                      "workdirs also sde fields, e.g. sde.eps=0.01")
  parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "digits_quality.json"))
  args = parser.parse_args()
  fields = [tuple(item.split("=", 1)) for item in args.set]
  results = [evaluate_workdir(workdir, args.sweep, args.num_samples, args.batch_size, process, fields,
                              args.num_repeats)
             for workdir in args.workdirs for process in args.processes]
  print("| process | sampler | grid | NFE | FD digits | KID digits | IS digits |")
  print("|---|---|---|---|---|---|---|")
  for result in results:
    for row in result["rows"]:
      print(f"| {result['process']}, {result['parametrization']}, seed {result['seed']} | {row['method']} | {row['grid']} | {row['nfe']} | "
            + " | ".join(f"{row[name + '_mean']:.3f}" for name in METRICS) + " |")
  for name, baseline in results[0]["baselines"].items():
    print(f"| baseline: {name} ({baseline['num_samples']} images) | - | - | - | "
          + " | ".join(f"{baseline[metric]:.3f}" for metric in METRICS) + " |")
  common.write_results(args.output, results, num_samples=args.num_samples, sweep=args.sweep,
                       sampling_fields=dict(fields))


if __name__ == "__main__":
  main()
