"""Sampling (docs/samplers.md): samplers.make_sampler builds a sampler from config.sampling; the fixed-step
methods, their time grids and coefficients, the adaptive ODE and the flow coordinates sit behind it. sample_job
is `--mode=sample`, data_parallel shards sample ids over every device of every process."""
