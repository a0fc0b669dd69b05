"""``tidepool delete``: append deletes (tombstones) to the write-ahead log."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tidepool_cli.engine.columns import check_string
from tidepool_cli.errors import InvalidInputError, StorageIOError
from tidepool_cli.limits import INT64_MAX, INT64_MIN
from tidepool_cli.ops.view import IndexView
from tidepool_cli.storage.lock import DEFAULT_LOCK_TIMEOUT
from tidepool_cli.storage.records import Batch
from tidepool_cli.storage.wal import WalWriter


@dataclass(frozen=True)
class DeleteResult:
    """What a delete wrote.

    Attributes
    ----------
    index : str
    requested : int
        Distinct ids asked for.
    found : int
        Of those, ids that were live when the delete was committed.
    wal_file : int
        Sequence number of the WAL file holding the tombstones.
    seconds : float
    """

    index: str
    requested: int
    found: int
    wal_file: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def delete(
    index: str | Path,
    ids: Sequence[str | int] = (),
    *,
    ids_file: str | Path | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> DeleteResult:
    """Delete rows by external id through the WAL.

    Parameters
    ----------
    index : str or Path
    ids : sequence of str or int
        Ids to delete (strings are parsed as integers for an integer-id index).
    ids_file : str or Path, optional
        A text file with one id per line (blank lines ignored), or ``-`` for stdin.
    lock_timeout : float

    Returns
    -------
    DeleteResult

    Raises
    ------
    InvalidInputError
        No ids, or an id that is not an integer in an integer-id index.
    IndexNotFoundError, LockTimeoutError, StorageIOError
    """
    t0 = time.perf_counter()
    view = IndexView(index)
    raw = list(ids)
    if ids_file is not None:
        raw.extend(_read_ids_file(ids_file))
    if not raw:
        raise InvalidInputError("no ids to delete; pass --id or --ids-file")
    keys = np.unique(_parse_ids(raw, view.settings.id_type))
    found = sum(int(np.count_nonzero(s.live & np.isin(s.ids, keys))) for s in view.sources())
    with WalWriter(view.layout) as writer:
        writer.append(Batch("delete", int(keys.shape[0]), keys))
        seq = writer.publish(lock_timeout, "delete")
    return DeleteResult(str(index), int(keys.shape[0]), found, seq, time.perf_counter() - t0)


def _read_ids_file(path: str | Path) -> list[str]:
    import sys

    try:
        text = sys.stdin.read() if str(path) == "-" else Path(path).read_text()
    except FileNotFoundError:
        raise InvalidInputError(f"{path}: no such ids file") from None
    except UnicodeDecodeError:
        raise InvalidInputError(f"{path}: ids file is not UTF-8 text") from None
    except OSError as exc:
        raise StorageIOError(f"{path}: cannot read the ids file ({exc.strerror or exc})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _parse_ids(raw: list[str | int], id_type: str) -> np.ndarray:
    if id_type == "str":
        out = [str(i) for i in raw]
        for i in out:
            problem = check_string(i, "string id", allow_empty=False)
            if problem:
                raise InvalidInputError(f"id {i[:40]!r}: {problem}")
        return np.array(out, dtype=str)
    values = []
    for i in raw:
        try:
            v = int(i)
        except ValueError:
            raise InvalidInputError(f"id {str(i)[:40]!r} is not an integer; this index uses integer ids") from None
        if not INT64_MIN <= v <= INT64_MAX:
            raise InvalidInputError(f"id {v} is outside the 64-bit integer range of ids")
        values.append(v)
    return np.array(values, dtype=np.int64)
