"""Errors the trainer raises, split by who must act: the user (config) or us (training)."""

from __future__ import annotations


class TrainerConfigError(ValueError):
    """The job cannot start as specified; the message says what to change.

    Raised before any Ray worker starts (missing model dir, hardware that cannot run the
    method, bad data), so a wrong spec costs seconds, not a cluster start-up.
    """


class TrainingFailedError(RuntimeError):
    """Training started but did not finish; checkpoints written so far are kept for resume."""
