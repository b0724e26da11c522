"""The one family of known errors. The CLI turns each into a one-line message and exit code 1."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


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


class OutOfMemory(PairmineError):
    """A step ran out of memory (a ``MemoryError``, or an Arrow allocation failure): never a
    damaged store. The message names the step; the hint says what lowers its memory."""


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure: ``MemoryError`` and its subclasses (numpy's
    ``_ArrayMemoryError``, pyarrow's ``ArrowMemoryError``), or an Arrow error whose message
    says an allocation failed (Arrow reports some failed ``realloc`` calls as ``OSError``)."""
    if isinstance(exc, MemoryError):
        return True
    if not (isinstance(exc, OSError) or type(exc).__module__.startswith("pyarrow")):
        return False
    text = str(exc).lower()
    return "out of memory" in text or ("alloc" in text and "failed" in text)


def out_of_memory(step: str, hint: str | None = None) -> OutOfMemory:
    """The one error for an allocation that failed during ``step``."""
    return OutOfMemory(f"ran out of memory in {step}",
                       hint or "give the process more memory, or lower the sizes of the step "
                       "(--block-rows, --batch-size, workers per node)")


@contextmanager
def memory_step(step: str, hint: str | None = None) -> Iterator[None]:
    """Turn an allocation failure inside the block into :func:`out_of_memory` (``step``,
    ``hint``); usable as a decorator too (``@memory_step("match: reading tile rows")``)."""
    try:
        yield
    except OutOfMemory:
        raise
    except Exception as exc:  # MemoryError is an Exception; anything else passes unchanged
        if not is_out_of_memory(exc):
            raise
        # the frames hold the arrays that did not fit: drop them with the traceback
        raise out_of_memory(step, hint) from None
