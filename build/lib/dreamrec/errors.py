"""Typed exceptions. Every message names the file and, where there is one, the row."""
from __future__ import annotations

from pathlib import Path


class DreamrecError(Exception):
    """Base class of every error dreamrec raises on purpose."""


class DataError(DreamrecError):
    """Bad input data. ``path`` and ``row`` (1-based data row, header excluded) are kept for callers."""

    def __init__(self, message: str, path: str | Path | None = None, row: int | None = None):
        self.path = None if path is None else str(path)
        self.row = row
        where = ""
        if self.path is not None:
            where = f"{self.path}"
            if row is not None:
                where += f", row {row}"
            where += ": "
        super().__init__(where + message)


class UnknownFormatError(DataError):
    """The named input format is not one dreamrec reads."""


class MissingColumnError(DataError):
    """A required column is absent (or misnamed)."""


class InvalidValueError(DataError):
    """A value cannot be parsed (e.g. a non-numeric or missing timestamp)."""


class EmptyDataError(DataError):
    """A file is empty, or nothing is left after filtering."""


class DuplicateIdError(DataError):
    """An id appears twice where it must be unique (e.g. item metadata)."""


class IdRangeError(DataError):
    """An id does not fit: out of range for the declared catalog, or too large for the id type."""


class ConfigError(DreamrecError):
    """A configuration value is missing, mistyped or inconsistent."""


class ArtifactError(DreamrecError):
    """A run or dataset directory is missing files or is inconsistent."""


class MissingExtraError(DreamrecError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""

    def __init__(self, what: str, package: str, extra: str):
        self.package = package
        self.extra = extra
        super().__init__(f"{what} needs {package}, which is not installed: pip install 'dreamrec[{extra}]'")
