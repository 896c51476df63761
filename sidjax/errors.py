"""The one error type for settings that cannot be used."""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting that cannot be used; the message says what to change.

    Attributes:
      field: the ``TrainConfig`` field the message is about (its first word),
        or None for a rule that ties several settings together. The CLI uses
        it to name the flag instead of the field.
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field
