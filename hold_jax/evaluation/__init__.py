"""Evaluation (docs/evaluation.md, docs/likelihood.md): the NLL bound, FID/KID/IS of images and SW1 of point sets
in resumable rounds, the feature networks and statistics they use, the quality-against-NFE sweep, and what the
console shows of them. eval_job runs every metric config.eval.metrics names."""
