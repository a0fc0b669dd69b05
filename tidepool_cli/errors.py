"""The tidepool error tree: every user-facing failure is one of these classes.

Each class carries the process exit code that ``tidepool`` returns for it and also
inherits the matching builtin exception, so library users can catch either
(``except FileNotFoundError`` catches :class:`IndexNotFoundError`). The CLI prints one
``Error: ...`` line per failure; the message names the path involved and, where there
is one, the fix.

Exit codes (documented in README.md, tested in tests/cli):

== ===========================================================================
0  success
1  internal error (a bug: please report it with ``--debug`` output)
2  usage error (unknown option, missing argument; printed by the CLI parser)
3  index not found, or the directory is not a tidepool index
4  invalid input: malformed file, dimension mismatch, NaN/Inf, bad filter, ...
5  corrupted index: checksum mismatch, truncated or unreadable file
6  index locked: another writer held the lock longer than ``--lock-timeout``
7  conflict: another process published a generation this command depended on
8  unsupported format: written by a newer tidepool, or an unknown feature flag
9  not found: none of the ids ``get`` was asked for is a live row
10 I/O error: disk full, permission denied, ...
== ===========================================================================
"""

from __future__ import annotations


class TidepoolError(Exception):
    """Base class of every error tidepool raises on purpose.

    Attributes
    ----------
    exit_code : int
        Process exit status the CLI returns for this error.
    """

    exit_code: int = 1


class UsageError(TidepoolError, ValueError):
    """Options that do not fit together, found after parsing (exit 2, like a parser error)."""

    exit_code = 2


class IndexNotFoundError(TidepoolError, FileNotFoundError):
    """The index directory is missing or does not hold a tidepool index (exit 3)."""

    exit_code = 3


class InvalidInputError(TidepoolError, ValueError):
    """Input data or arguments are malformed or inconsistent with the index (exit 4)."""

    exit_code = 4


class FilterSyntaxError(InvalidInputError):
    """A ``--filter`` expression does not parse or names an impossible comparison (exit 4)."""


class CorruptIndexError(TidepoolError):
    """A file of the index fails its checksum or structural checks (exit 5)."""

    exit_code = 5


class LockTimeoutError(TidepoolError, TimeoutError):
    """Another writer held the index lock for longer than the allowed wait (exit 6)."""

    exit_code = 6


class ConflictError(TidepoolError):
    """Another process published a new generation that invalidates this one (exit 7)."""

    exit_code = 7


class UnsupportedFormatError(TidepoolError):
    """A file was written by a newer format version or uses an unknown feature (exit 8)."""

    exit_code = 8


class RowsNotFoundError(TidepoolError, LookupError):
    """None of the ids asked for is a live row of the index (exit 9)."""

    exit_code = 9


class StorageIOError(TidepoolError, OSError):
    """The operating system refused a read or write: disk full, permissions (exit 10)."""

    exit_code = 10


class IndexRecoveryWarning(UserWarning):
    """The index was read after a recovery (e.g. a damaged CURRENT); the CLI prints it as one line."""
