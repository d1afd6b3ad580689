"""The workdir, the unit a run is handed around as: checkpoints and their integrity, the run record (config.json),
the read side that sampling and evaluation load a trained model through, and views of it for notebooks."""
