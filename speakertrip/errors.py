"""Exceptions that speakertrip raises for bad input; each message names the file, line or key."""

from __future__ import annotations


class SpeakertripError(Exception):
    """Base class: a problem with the user's input, reported in one line by the CLI."""


class FormatError(SpeakertripError, ValueError):
    """A malformed line or field in a file we read (trial list, score file, manifest, store)."""

    def __init__(self, message: str, path: object = None, line_no: int | None = None, line: str | None = None):
        where = ""
        if path is not None:
            where = f"{path}:{line_no}: " if line_no is not None else f"{path}: "
        shown = f" (line: {line.rstrip()!r})" if line is not None else ""
        super().__init__(f"{where}{message}{shown}")
        self.path, self.line_no, self.line = path, line_no, line


class AudioError(SpeakertripError, ValueError):
    """Audio that cannot be used: missing, empty, corrupt, silent, NaN-bearing or too short."""


class ConfigError(SpeakertripError, ValueError):
    """An unknown key, a wrong type or an invalid value in a configuration."""


class KeyNotFoundError(SpeakertripError, KeyError):
    """Keys (utterances, speakers) asked for but not present."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the plain message
        return str(self.args[0]) if self.args else ""


class StoreError(SpeakertripError):
    """An enrolment store that cannot serve the request as asked (the service answers 403, 409 or 503)."""


class ReadOnlyStoreError(StoreError):
    """A write (enrol, remove) to a store opened read-only or by a role without write rights (HTTP 403)."""


class StoreUnavailableError(StoreError):
    """The store's database cannot be reached now (restarting, down, out of connections); retry (HTTP 503)."""


class CorruptStoreError(StoreError):
    """The store's file or schema is damaged or of an incompatible version (HTTP 503, naming the store)."""
