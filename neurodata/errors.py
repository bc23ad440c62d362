"""The exception hierarchy: every error a user can cause is a :class:`NeurodataError`.

Each message names the input at fault and says what to do about it, so that no raw
``KeyError`` or ``OSError`` from deep inside h5py or JAX reaches the user.
"""

from __future__ import annotations


class NeurodataError(Exception):
    """Base class of every error neurodata raises on purpose."""


class SchemaError(NeurodataError, ValueError):
    """A dataset does not follow the neurodata data model (dims, variables or attrs)."""


class InputDataError(NeurodataError, ValueError):
    """Values a model or function cannot take: NaNs, wrong dims, too few neurons or trials."""


class FormatError(NeurodataError, OSError):
    """A file or folder is corrupt, truncated, of an unknown format or missing a field."""


class MissingFieldError(FormatError, KeyError):
    """A file or folder lacks a field (an array, a column, a parameter) the loader needs."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnsafeFileError(NeurodataError, PermissionError):
    """Reading the file would execute code (a pickle); the caller must opt in explicitly."""


class DatasetNotFoundError(NeurodataError, LookupError):
    """An id that the dataset registry does not know."""


class LicenseError(NeurodataError, PermissionError):
    """A registry entry whose licence is ``unknown`` was requested without opting in."""


class ChecksumError(NeurodataError, OSError):
    """A downloaded or mirrored file does not match the sha256 in the registry."""


class DownloadError(NeurodataError, OSError):
    """A registry file could not be fetched from any of its locations."""


class OutputExistsError(NeurodataError, FileExistsError):
    """An output path already exists and ``overwrite=True`` was not given."""


class NotFittedError(NeurodataError, AttributeError):
    """A method that needs a fitted model was called before ``fit``."""
