"""Pieces of the training loop in :mod:`speakertrip.train`: schedules, checkpoints, logs, validation, DDP."""
