"""Pieces of the training loop in :mod:`speakertrip.training.trainer`: schedules, checkpoints, logs, validation, DDP."""
