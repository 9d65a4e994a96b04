"""Training's user-facing errors (each an ``InputError``: the CLI shows its one sentence)."""
from __future__ import annotations

from notadiagnosis.errors import InputError


class DatasetError(InputError):
    """A dataset directory or nodule table is missing, incomplete, of another format, or inconsistent."""


class InsertionError(InputError):
    """A background CT or an option of the insertion source cannot be used."""
