"""The files of a sample-quality evaluation: the names of its rounds folders, reports and quality-versus-NFE
tables, and what each name hashes (hold_jax/evaluation/image_quality.py computes them; report_files.py writes them).

Rounds. workdir/eval/quality_<sampler>_ckpt<step>_<network>_<tag>/ (`run_name`), the tag hashing what the
rounds' contents depend on: the sampling fields, the seed, eval.round_size and the feature network.

Reports. workdir/eval/quality_<sampler>_ckpt<step>_<network>_<hash>.json (`report_stem`), the readable part
its rounds folder's, <hash> report_files.canonical_hash of `report_settings`: every sampling field but
UNHASHED_SAMPLING_FIELDS, the seed, the checkpoint step, the feature network (name, weights' SHA-256, resize),
the image metrics asked for and REPORT_EVAL_FIELDS (the sample count, the repeats, the reference, the KID
subsets and IS splits). So a run with other settings writes a new report beside the earlier ones, and the same
settings rewrite the same file. Left out, because no reported number depends on them: the sampling and
feature batch sizes and eval.round_size (sample k of repeat r comes from fold_in(PRNGKey(seed + r), k)
whichever batch or round holds it; a network's features of an image do not depend on its batch),
sampling.num_samples (eval.num_samples is drawn), the weights' path (their hash is kept), the statistics cache
folder, eval.checkpoint_step as written (-1 and the step it resolves to give one report) and the NLL bound's
fields. The trained fields are fixed for a workdir by its config.json. The report records `report_settings`
under 'hashed_settings' (`report_stem` gives its name again), the whole sampling and eval groups, the seed, the
step and its rounds folder ('run'); it is written under a temporary name and renamed
(report_files.write_json_atomic), so a killed job never leaves half a report under the final name.

Tables. workdir/eval/quality_vs_nfe_ckpt<step>_<network>_<hash>.json (`table_stem`) holds one row per entry of
eval.sampler_sweep; <hash> covers `table_settings`: those of a report, with the sweep's entries in their order
in place of the three sampling fields they replace.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from hold_jax import report_files
from hold_jax.evaluation import image_features
from hold_jax.evaluation import sampler_sweep
from hold_jax.workdir import run_record

IMAGE_METRICS = ("fid", "kid", "is")  # in this order in a report's settings, whatever order eval.metrics gives
UNHASHED_SAMPLING_FIELDS = ("batch_size", "num_samples")
# The eval fields a quality report depends on, besides the feature network and eval.metrics.
REPORT_EVAL_FIELDS = ("num_samples", "num_repeats", "reference_split", "reference_stats", "kid_subset_size",
                      "is_splits")
# The sampling fields each entry of eval.sampler_sweep replaces (sampler_sweep.entry_config).
SWEPT_SAMPLING_FIELDS = ("method", "grid", "num_steps")


def sampler_part(sampling_settings) -> str:
  """<method>_<grid>_<N>steps, or <method>_adaptive, of config.sampling or its JSON dict: the sampler's part of
  the names of a run's rounds folder and report."""
  method = sampling_settings["method"]
  if method == "ode_adaptive":
    return f"{method}_adaptive"
  return f"{method}_{sampling_settings['grid']}_{sampling_settings['num_steps']}steps"


def run_name(config, network: image_features.Network, step: int) -> str:
  """The folder of an evaluation's rounds: what decides their contents (sampler, seed, round size, step,
  network), so that rounds are resumed only by a run that would write the same ones; a run with more samples
  or repeats, or another reference, reuses them."""
  settings = {field: config.sampling[field] for field in sorted(config.sampling.keys())
              if field not in ("num_samples", "batch_size")}
  settings.update(seed=config.seed, round_size=config.eval.round_size, network=network.name,
                  weights=network.weights_sha256, resize=network.resize, **run_record.sampling_process(config))
  tag = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]
  return f"quality_{sampler_part(config.sampling)}_ckpt{step}_{network.name}_{tag}"


def report_settings(config, network: image_features.Network, step: int) -> dict[str, Any]:
  """What the quality report of `config` from checkpoint `step` with `network` is a function of within a
  workdir, as JSON values; its report_files.canonical_hash is the name's (module docstring). 'metrics' lists the
  image metrics asked for in IMAGE_METRICS' order, so ('fid', 'kid') and ('nll', 'kid', 'fid') give one name."""
  sampling_settings = json.loads(config.sampling.to_json_best_effort())
  eval_settings = json.loads(config.eval.to_json_best_effort())
  return {"sampling": {field: value for field, value in sampling_settings.items()
                       if field not in UNHASHED_SAMPLING_FIELDS},
          "seed": int(config.seed), "checkpoint_step": int(step),
          "network": {"name": network.name, "weights_sha256": network.weights_sha256, "resize": network.resize},
          "metrics": [name for name in IMAGE_METRICS if name in eval_settings["metrics"]],
          "eval": {field: eval_settings[field] for field in REPORT_EVAL_FIELDS},
          **run_record.sampling_process(config)}


def report_stem(settings: dict[str, Any]) -> str:
  """quality_<sampler_part>_ckpt<step>_<network>_<canonical_hash> of `report_settings`: a report's file name
  less .json."""
  return (f"quality_{sampler_part(settings['sampling'])}_ckpt{settings['checkpoint_step']}_"
          f"{settings['network']['name']}_{report_files.canonical_hash(settings)}")


def table_settings(config, network: image_features.Network, step: int) -> dict[str, Any]:
  """What the quality-versus-NFE table of config.eval.sampler_sweep is a function of: `report_settings` less
  the sampling fields the entries replace, with 'sampler_sweep', the entries as "method:grid:num_steps" in
  their order (the rows')."""
  settings = report_settings(config, network, step)
  settings["sampling"] = {field: value for field, value in settings["sampling"].items()
                          if field not in SWEPT_SAMPLING_FIELDS}
  settings["sampler_sweep"] = [f"{entry.method}:{entry.grid}:{entry.num_steps}" for entry in
                               sampler_sweep.parse_sampler_sweep(config.eval.get("sampler_sweep", ()))]
  return settings


def table_stem(settings: dict[str, Any]) -> str:
  """quality_vs_nfe_ckpt<step>_<network>_<canonical_hash> of `table_settings`: a table's file name less .json
  (workdir_view.quality_tables finds them by the quality_vs_nfe_ prefix)."""
  return (f"quality_vs_nfe_ckpt{settings['checkpoint_step']}_{settings['network']['name']}_"
          f"{report_files.canonical_hash(settings)}")
