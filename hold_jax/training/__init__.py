"""Training (docs/training.md): the losses (BCSM, DSM, the denoiser's), the train state, step and loop, the
optimizer and parameter average, stop requests and input prefetching."""
