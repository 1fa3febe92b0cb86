"""A setup hook for the workers of a Ray that kubetune starts on this machine.

Without Ray's dashboard (we start Ray without it: it costs seconds and memory on a laptop) the
State API is absent, and Ray Train's placement-group cleaner logs a warning about it every
second for the whole run, drowning the progress bar. The hook lowers that one logger to errors.
"""

from __future__ import annotations

import logging

NOISY_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


def quiet_ray_train_noise() -> None:
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
