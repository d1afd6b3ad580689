"""Quality versus speed on the multimodal swiss roll from trained workdirs.

For each workdir (trained with configs/toy2d.py, any sde.order; its process is read from the workdir's
config.json), draws 10,000 samples from the latest EMA parameters with each fixed-step sampler and time grid
at each budget of network evaluations (NFE: the steps are chosen so the sampler's own count, the denoising
step and Heun's two evaluations per step included, is at most the budget), and with the adaptive ODE solver at
each tolerance (its NFE is what it took). Reports the share within 0.01 of the noiseless spirals and the
sliced Wasserstein-1 distance (256 random directions) to 10,000 fresh data points, and for each workdir the
NLL bound of `--mode=eval` (exact trace, kernel auxiliaries) on --nll_examples fresh points. Prints the full
table, then the best sampler per order and NFE, then the targets (HOLD at 20 NFE: SW1 <= 0.020 with at least
0.8 within 0.01; at 10 NFE: SW1 <= 0.030). Writes benchmarks/results/toy2d_quality.json.

  python benchmarks/toy2d_quality.py --workdirs W_order1 W_order2 W_order3 [--nfe 10 20 50 100 200]
      [--methods lie_trotter strang gddim ...] [--grids quadratic edm] [--multistep_orders 2 3]
      [--time_variables b log_snr] [--ode_tolerances 1e-3 1e-5] [--ode_variables state flow]
      [--nll_examples 2000] [--processes vp cld hold] [--rhos 2.5 7] [--stochasticities 0 0.5]
      [--sampling_seeds 0 1]

--rhos sets sampling.rho of the 'edm' and 'sigma' grids; --stochasticities gddim's lambda (0: the probability-flow
ODE, 1: the reverse SDE); with --sampling_seeds every row is drawn with each seed (config.seed) and reports the
mean within 0.01 and SW1 (each seed's in the JSON).

With --processes, each denoiser workdir (loss.parametrization = 'denoiser') is sampled with each of those
processes (hold_jax/process/sde.py STOCK_PROCESSES): one network, every order (docs/denoiser.md); rows name it
W@process.
"""
import argparse
import functools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from hold_jax.data import input_pipeline  # noqa: E402
from hold_jax.evaluation import nll_rounds as evaluate_lib  # noqa: E402
from hold_jax.evaluation import point_clouds  # noqa: E402
from hold_jax.sampling import sample_job  # noqa: E402
from hold_jax.workdir import run_record, trained_model  # noqa: E402

import common  # noqa: E402  (benchmarks/common.py)


def trained_config(source):
  """The workdir's recorded config (its config.json) for a source 'W', or with STOCK_PROCESSES[p] for 'W@p'."""
  workdir, _, process = source.partition("@")
  if not os.path.isfile(os.path.join(workdir, "config.json")):
    raise SystemExit(f"{workdir}/config.json not found: train the workdir with hold_jax.main, which writes it.")
  return common.with_process(run_record.load_config(workdir), process or None)


@functools.lru_cache(maxsize=None)
def ema_params(workdir):
  """(EMA parameters, step) of the workdir's latest checkpoint, restored once."""
  return trained_model.load_ema_params(run_record.load_config(workdir), workdir, (2,))


def steps_for_budget(method, nfe, order):
  """The most steps whose network evaluations (samplers.network_evaluations, denoising on) fit in nfe."""
  per_step = 2 if method == "ode_heun" else 1
  return max(1, (nfe - int(order == 1)) // per_step)


def evaluate(workdir, method, grid, nfe, tolerance=None, num_samples=10000, seeds=(None,), **settings):
  """One row: samples of `method` (at tolerance for 'ode_adaptive', else nfe and grid) and their quality, the
  mean over the sampling seeds (None: the workdir's config.seed); settings: further config.sampling fields
  (e.g. multistep_order, time_variable, ode_variable, rho, stochasticity)."""
  draws = [_evaluate_seed(workdir, method, grid, nfe, tolerance, num_samples, seed, **settings) for seed in seeds]
  row = dict(draws[0], within_0_01=float(np.mean([d["within_0_01"] for d in draws])),
             sliced_w1=float(np.mean([d["sliced_w1"] for d in draws])))
  if len(draws) > 1:
    row.update(seed=None, per_seed=[{k: d[k] for k in ("seed", "within_0_01", "sliced_w1")} for d in draws])
  print(json.dumps(row), flush=True)
  return row


def _evaluate_seed(workdir, method, grid, nfe, tolerance, num_samples, seed, **settings):
  config = trained_config(workdir)
  if seed is not None:
    config.seed = seed
  order = config.sde.order
  config.sampling.method, config.sampling.grid, config.sampling.denoise = method, grid, True
  for field, value in settings.items():
    config.sampling[field] = value
  if method == "ode_adaptive":
    config.sampling.ode_rtol = config.sampling.ode_atol = tolerance
  else:
    config.sampling.num_steps = steps_for_budget(method, nfe, order)
  config.sampling.num_samples = config.sampling.batch_size = num_samples
  params, step = ema_params(workdir.partition("@")[0])
  start = time.perf_counter()
  samples, used_nfe = sample_job.draw(config, params, (2,), return_nfe=True)
  seconds = time.perf_counter() - start
  data = input_pipeline.multimodal_swiss_roll(np.random.default_rng(12345), num_samples)
  finite = np.isfinite(samples).all(axis=1)
  within = float(np.mean(finite & (point_clouds.spiral_distance(np.nan_to_num(samples, nan=1e3)) < 0.01)))
  sw1 = point_clouds.sliced_wasserstein(samples, data) if finite.all() else float("inf")
  row = dict(workdir=workdir, order=order, method=method, grid="adaptive" if tolerance else grid,
             tolerance=tolerance, num_steps=None if tolerance else config.sampling.num_steps, nfe=int(used_nfe),
             checkpoint_step=step, seed=int(config.seed), **settings, within_0_01=within, sliced_w1=sw1,
             finite_fraction=float(finite.mean()), seconds=seconds)
  return row


def nll_bound(workdir, num_examples):
  """The `--mode=eval` report (nats per point) of the workdir on num_examples fresh points."""
  config = trained_config(workdir)
  config.eval.num_examples = num_examples
  config.eval.batch_size = min(num_examples, 500)
  with open(evaluate_lib.evaluate(config, workdir.partition("@")[0])) as f:
    report = json.load(f)
  print(json.dumps(dict(workdir=workdir, nll=report["nll_bound_nats"], nfe=report["nfe_mean"])), flush=True)
  return report


def sampler_name(row):
  """'gddim-2 log_snr lambda 0.5' for a gddim row (its multistep order, time variable and stochasticity, when
  not 0), else the method; ' rho R' where a rho grid set one."""
  name = row["method"]
  if row["method"] == "gddim":
    name = f"gddim-{row['multistep_order']} {row['time_variable']}"
    if row.get("stochasticity"):
      name += f" lambda {row['stochasticity']:g}"
  if row.get("grid") in ("edm", "sigma") and "rho" in row:
    name += f" rho {row['rho']:g}"
  return name


def best_rows(rows, floor=0.2):
  """The fixed-step row with the least SW1 among those with more than `floor` within 0.01 (CLD-SGM's toy
  score), per (order, NFE budget), in order."""
  best = {}
  for r in rows:
    if r["method"] == "ode_adaptive" or r["within_0_01"] <= floor:
      continue
    key = (r["order"], r["budget"])
    if key not in best or r["sliced_w1"] < best[key]["sliced_w1"]:
      best[key] = r
  return [best[key] for key in sorted(best)]


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdirs", nargs="+", required=True)
  parser.add_argument("--nfe", nargs="+", type=int, default=[10, 20, 50, 100, 200])
  parser.add_argument("--methods", nargs="+",
                      default=["lie_trotter", "strang", "strang_exponential", "euler_maruyama", "ode_heun"])
  parser.add_argument("--grids", nargs="+", default=["quadratic", "edm"])
  parser.add_argument("--ode_tolerances", nargs="*", type=float, default=[1e-3, 1e-5])
  parser.add_argument("--multistep_orders", nargs="+", type=int, default=[2],
                      help="'gddim' rows at each of these sampling.multistep_order")
  parser.add_argument("--time_variables", nargs="+", default=["log_snr"],
                      help="'gddim' rows at each of these sampling.time_variable (orders 2-3)")
  parser.add_argument("--ode_variables", nargs="+", default=["flow"], help="'ode_adaptive' rows in each")
  parser.add_argument("--nll_examples", type=int, default=2000, help="0 skips the NLL bound")
  parser.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                       "toy2d_quality.json"))
  parser.add_argument("--processes", nargs="+", default=[], choices=list(common.STOCK_PROCESSES),
                      help="sample each denoiser workdir with these processes (rows name W@process)")
  parser.add_argument("--rhos", nargs="+", type=float, default=[7.0], help="sampling.rho of the edm and sigma grids")
  parser.add_argument("--stochasticities", nargs="+", type=float, default=[0.0],
                      help="'gddim' rows at each of these sampling.stochasticity (lambda)")
  parser.add_argument("--sampling_seeds", nargs="+", type=int, default=[None],
                      help="draw every row with each of these seeds and report the means")
  args = parser.parse_args()
  if args.processes:
    args.workdirs = [f"{workdir}@{process}" for workdir in args.workdirs for process in args.processes]
  rows = []
  for workdir in args.workdirs:
    for nfe in args.nfe:
      for method in args.methods:
        for grid, rho in [(grid, rho) for grid in args.grids
                          for rho in (args.rhos if grid in ("edm", "sigma") else [None])]:
          grid_settings = dict(seeds=args.sampling_seeds, **({} if rho is None else dict(rho=rho)))
          if method != "gddim":
            rows.append(dict(evaluate(workdir, method, grid, nfe, **grid_settings), budget=nfe))
            continue
          for multistep_order in args.multistep_orders:
            for variable in args.time_variables if multistep_order > 1 else args.time_variables[:1]:
              for stochasticity in args.stochasticities:
                rows.append(dict(evaluate(workdir, method, grid, nfe, multistep_order=multistep_order,
                                          time_variable=variable, stochasticity=stochasticity, **grid_settings),
                                 budget=nfe))
    for tolerance in args.ode_tolerances:
      for variable in args.ode_variables:
        rows.append(dict(evaluate(workdir, "ode_adaptive", "quadratic", None, tolerance, seeds=args.sampling_seeds,
                                  ode_variable=variable), budget=None))
  nll = {w: nll_bound(w, args.nll_examples) for w in args.workdirs} if args.nll_examples else {}

  print("| workdir | order | sampler | grid / tolerance | steps | NFE | within 0.01 | SW1 | finite | seconds |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    setting = f"{r['tolerance']:g} {r['ode_variable']}" if r["tolerance"] else r["grid"]
    print(f"| {r['workdir']} | {r['order']} | {sampler_name(r)} | {setting} | {r['num_steps'] or '-'} | {r['nfe']} | "
          f"{r['within_0_01']:.3f} | {r['sliced_w1']:.4f} | {r['finite_fraction']:.3f} | {r['seconds']:.1f} |")
  print("\nBest fixed-step sampler per order and NFE budget (least SW1 with more than 0.2 within 0.01), the "
        "adaptive ODE, and the NLL bound (nats per point):")
  print("| order | NFE budget | best sampler (grid) | within 0.01 | SW1 |")
  print("|---|---|---|---|---|")
  for r in best_rows(rows):
    print(f"| {r['order']} | {r['budget']} | {sampler_name(r)} ({r['grid']}) | {r['within_0_01']:.3f} | "
          f"{r['sliced_w1']:.4f} |")
  for r in rows:
    if r["method"] == "ode_adaptive":
      print(f"| {r['order']} | adaptive {r['tolerance']:g}: {r['nfe']} | ode_adaptive ({r['ode_variable']}) | "
            f"{r['within_0_01']:.3f} | "
            f"{r['sliced_w1']:.4f} |")
  for workdir, report in nll.items():
    print(f"NLL bound {workdir}: {report['nll_bound_nats']:.4f} +- "
          f"{report['nll_bound_nats_stderr']:.4f} nats (mean NFE {report['nfe_mean']:.0f})")
  for budget, most_sw1, least_within in ((20, 0.020, 0.8), (10, 0.030, 0.0)):
    hold = [r for r in rows if r["order"] == 3 and r.get("budget") == budget and r["within_0_01"] >= least_within]
    if hold:
      r = min(hold, key=lambda r: r["sliced_w1"])
      met = r["sliced_w1"] <= most_sw1
      print(f"Target: HOLD at {budget} NFE, SW1 <= {most_sw1} with >= {least_within} within 0.01: "
            f"{sampler_name(r)} ({r['grid']}) {r['within_0_01']:.3f} / {r['sliced_w1']:.4f} -> "
            f"{'met' if met else 'NOT met'}")
  common.write_results(args.output, rows, nll={w: {k: report[k] for k in (
      "nll_bound_nats", "nll_bound_nats_stderr", "nfe_mean", "num_examples")} for w, report in nll.items()})


if __name__ == "__main__":
  main()
