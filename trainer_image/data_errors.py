"""The one exception data preparation raises for bad input, so callers can fail before training."""

from __future__ import annotations


class DataError(ValueError):
    """Bad training data or a data setting that cannot work; the message says what to change.

    Raised before any training starts: unreadable or missing files, too many malformed rows,
    a dataset format that does not fit the objective, a tokenizer without a chat template.
    """
