"""The one family of known errors. The CLI turns each into a one-line message and exit code 1."""

from __future__ import annotations


class PairmineError(Exception):
    """A known, user-facing error: bad input, a missing file, a wrong checkpoint.

    ``hint`` says what to do about it; the CLI prints ``message`` then the hint.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class InputError(PairmineError):
    """The user's input (a source, a path, an option value) cannot be used."""


class SourceError(InputError):
    """An image source is missing, empty or malformed."""


class CheckpointError(InputError):
    """A checkpoint is missing, is not a checkpoint, or does not fit the architecture."""


class EncoderError(InputError):
    """An encoder spec names no registered encoder or cannot be built."""


class StoreError(PairmineError):
    """A store on disk is missing, incomplete, of the wrong format, or would be overwritten."""


class ConfigError(InputError):
    """Options that contradict each other or are out of range (e.g. a band with min > max)."""


class TrainingError(PairmineError):
    """A training run failed on valid options and inputs (e.g. the loss diverged)."""
