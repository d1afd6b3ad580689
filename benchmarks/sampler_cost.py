"""What a sampler costs beyond its network: run time and compile time of every fixed-step sampler.

For a config's score network at its sampling batch (random-init parameters: cost does not depend on them):

  overhead = (time of one jitted sampler call with N steps) / (NFE x time of one jitted score-network call)

where NFE is the sampler's network evaluations (N, or 2N for 'ode_heun'; no denoising, which for order 1 adds
one). 1.00 means the sampler costs exactly its network evaluations; target <= 1.10 at N = 100. A lone call
pays a dispatch and, on CPU, runs slower than the same evaluation inside a compiled loop, so the table also
divides by N chained evaluations in one lax.scan (`network_scan`): that ratio is what the sampler's own
work (linear step, noise, schedule) adds. The network
call and the sampler are timed in alternating rounds and compared by medians, so a noisy, shared machine
moves both alike. Compile time is `jit(...).lower(...).compile()` of the whole sampler at N = 10 and N = 1000
(target: the ratio <= 1.5; every fixed-step sampler is one lax.scan whose schedule enters as constants),
and gddim's float64 schedule build for 1000 steps (target < 1 s).
Writes benchmarks/results/sampler_cost.json (or --output).

  python benchmarks/sampler_cost.py [--configs toy2d digits] [--methods lie_trotter strang ...] [--steps 100]
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from hold_jax import models  # noqa: E402
from hold_jax.data import input_pipeline  # noqa: E402
from hold_jax.process import sde as sde_lib  # noqa: E402
from hold_jax.sampling import flow_schedule, samplers  # noqa: E402
from hold_jax.workdir import trained_model  # noqa: E402

import common  # noqa: E402  (benchmarks/common.py)


def setup(config):
  """(sde, score_fn, params, data_shape, batch) for a config, with freshly initialised parameters."""
  shape = input_pipeline.data_shape(config.data)
  sde = sde_lib.from_config(config.sde)
  model = models.create_model(config.model, shape)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, sde.order) + shape), jnp.ones((1,)))["params"]
  return sde, trained_model.make_score_fn(sde, model, config.loss), params, shape, config.sampling.batch_size


def build_sampler(sde, score_fn, shape, method, num_steps, grid):
  """(jitted sampler(params, rng, ids) -> x, its NFE) for one fixed-step method, without denoising."""
  @jax.jit
  def sampler(params, rng, ids):
    return samplers.sample(sde, score_fn, params, rng, ids, shape, num_steps, method, grid=grid, denoise=False)

  return sampler, samplers.network_evaluations(method, num_steps, sde.order, denoise=False)


def compile_seconds(build, *args, repeats=2):
  """The least time of `repeats` trace + compile runs of fresh jitted functions from build()."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    build().lower(*args).compile()
    times.append(time.perf_counter() - start)
  return min(times)


def mean_seconds(fn, args, seconds):
  """Mean time of calls over about `seconds` (at least 3 calls), after one warm-up call.

  Each call is waited for: with asynchronous dispatch, an unwaited loop would queue calls for as long as
  dispatching them takes, not for `seconds` of work.
  """
  jax.block_until_ready(fn(*args))
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds or count < 3:
    jax.block_until_ready(fn(*args))
    count += 1
  return (time.perf_counter() - start) / count


def network_scan(score_fn, num_evaluations):
  """jit of num_evaluations chained network calls in one lax.scan, each at its own time and on the last
  call's update (so XLA can neither hoist the time embedding nor drop a call): the least a sampler with
  that NFE can cost."""

  @jax.jit
  def chained(params, u, t):
    def body(u, t_step):
      return u.at[:, -1].add(1e-3 * score_fn(params, u, t * t_step)), None
    return jax.lax.scan(body, u, jnp.linspace(1.0, 0.01, num_evaluations))[0]

  return chained


def schedule_build_seconds(sde, num_steps, grid):
  """(first, second) wall time of gddim's float64 schedule (hold_jax/sampling/flow_schedule.py) for num_steps steps at
  the default multistep order and time variable: the first includes compiling the kernel for its shapes."""
  times = np.asarray(samplers.time_grid(sde, num_steps, grid), np.float64)
  seconds = []
  for _ in range(2):
    start = time.perf_counter()
    flow_schedule.build(sde, times, 3, "b")
    seconds.append(time.perf_counter() - start)
  return tuple(seconds)


def measure(config_name, methods, num_steps, grid, rounds, seconds, compile_steps, compile_repeats):
  config = common.load_config(config_name)
  sde, score_fn, params, shape, batch = setup(config)
  rng, ids = jax.random.PRNGKey(0), jnp.arange(batch)
  u = jax.random.normal(jax.random.PRNGKey(1), (batch, sde.order) + shape)
  t = jnp.full((batch,), 0.3)
  network = jax.jit(score_fn).lower(params, u, t).compile()
  chained = network_scan(score_fn, num_steps).lower(params, u, t).compile()
  compiled = {}
  for method in methods:
    sampler, nfe = build_sampler(sde, score_fn, shape, method, num_steps, grid)
    compiled[method] = (sampler.lower(params, rng, ids).compile(), nfe)
  network_times, chained_times, sampler_times = [], [], {method: [] for method in methods}
  for _ in range(rounds):
    network_times.append(mean_seconds(network, (params, u, t), seconds))
    chained_times.append(mean_seconds(chained, (params, u, t), seconds))
    for method in methods:
      sampler_times[method].append(mean_seconds(compiled[method][0], (params, rng, ids), seconds))
  network_s = float(np.median(network_times))
  chained_s = float(np.median(chained_times)) / num_steps  # per evaluation, inside a scan
  rows = []
  for method in methods:
    sampler_s, nfe = float(np.median(sampler_times[method])), compiled[method][1]
    compiles = {n: compile_seconds(lambda n=n: build_sampler(sde, score_fn, shape, method, n, grid)[0], params,
                                   rng, ids, repeats=compile_repeats)
                for n in compile_steps}
    low, high = min(compile_steps), max(compile_steps)
    build = schedule_build_seconds(sde, high, grid) if method == "gddim" else None
    row = dict(config=config_name, order=sde.order, batch=batch, method=method, num_steps=num_steps, nfe=nfe,
               schedule_build_s=build,
               network_ms=1e3 * network_s, network_in_scan_ms=1e3 * chained_s, sampler_ms=1e3 * sampler_s,
               overhead=sampler_s / (nfe * network_s), overhead_vs_scan=sampler_s / (nfe * chained_s),
               compile_s={str(n): s for n, s in compiles.items()}, compile_ratio=compiles[high] / compiles[low])
    print(json.dumps(row), flush=True)
    rows.append(row)
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--configs", nargs="+", default=["toy2d", "digits"])
  parser.add_argument("--methods", nargs="+", default=list(samplers.FIXED_STEP_METHODS))
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--grid", default="quadratic")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--seconds", type=float, default=1.0)
  parser.add_argument("--compile_steps", type=int, nargs=2, default=[10, 1000])
  parser.add_argument("--compile_repeats", type=int, default=2, help="compile time is the least of this many")
  parser.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                       "sampler_cost.json"))
  args = parser.parse_args()
  low, high = args.compile_steps
  rows = [row for name in args.configs
          for row in measure(name, args.methods, args.steps, args.grid, args.rounds, args.seconds, (low, high),
                         args.compile_repeats)]
  device = jax.devices()[0]
  print(f"device: {device.device_kind} ({jax.device_count()} x {device.platform}); N = {args.steps} steps, "
        f"{args.grid} grid")
  print(f"| config | batch | method | NFE | network call (ms) | in a scan (ms) | sampler (ms) "
        f"| sampler / (NFE x call) | sampler / (NFE x in scan) | compile N={low} (s) | compile N={high} (s) | ratio |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['config']} | {r['batch']} | {r['method']} | {r['nfe']} | {r['network_ms']:.3f} | "
          f"{r['network_in_scan_ms']:.3f} | {r['sampler_ms']:.1f} | {r['overhead']:.3f} | "
          f"{r['overhead_vs_scan']:.3f} | {r['compile_s'][str(low)]:.2f} | "
          f"{r['compile_s'][str(high)]:.2f} | {r['compile_ratio']:.2f} |")
  for r in rows:
    if r["schedule_build_s"]:
      first, second = r["schedule_build_s"]
      print(f"gddim schedule for {high} steps ({r['config']}): {first:.2f} s first (kernel compiled), "
            f"{second:.2f} s again")
  common.write_results(args.output, rows, num_steps=args.steps, grid=args.grid)


if __name__ == "__main__":
  main()
