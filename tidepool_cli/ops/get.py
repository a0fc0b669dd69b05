"""``tidepool get``: rows by id, with their vectors and attributes, from one snapshot plus the WAL tail."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tidepool_cli.errors import InvalidInputError
from tidepool_cli.ops.delete import _parse_ids, _read_ids_file
from tidepool_cli.ops.select import row_attributes, short_floats
from tidepool_cli.ops.view import IndexView


@dataclass(frozen=True)
class GetResult:
    """Rows found by id.

    Attributes
    ----------
    index : str
    ids : list of int or str
        Ids found, in the order they were asked for (each once).
    vectors : (n, d) float32 or None
        Their stored vectors (unit rows in a cosine index); None with ``vectors=False``.
    attributes : list of dict
        Their attributes (missing ones omitted).
    missing : list of int or str
        Ids asked for that no live row has, in the order asked.
    """

    index: str
    ids: list[Any]
    vectors: np.ndarray | None
    attributes: list[dict[str, Any]]
    missing: list[Any]

    def rows(self) -> list[dict[str, Any]]:
        """One ``{"id", "vector", "attributes"}`` object per found row (no ``vector`` without vectors)."""
        vecs = short_floats(self.vectors) if self.vectors is not None else None
        out = []
        for i, (rid, attrs) in enumerate(zip(self.ids, self.attributes)):
            row: dict[str, Any] = {"id": rid}
            if vecs is not None:
                row["vector"] = vecs[i]
            row["attributes"] = attrs
            out.append(row)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``{"rows": [...], "missing": [...]}``."""
        return {"rows": self.rows(), "missing": self.missing}


def get(index: str | Path, id: Sequence[str | int] = (), *, ids_file: str | Path | None = None, vectors: bool = True) -> GetResult:
    """Fetch live rows by external id.

    Parameters
    ----------
    index : str or Path
    id : sequence of str or int
        Ids to fetch (strings are parsed as integers for an integer-id index).
    ids_file : str or Path, optional
        A text file with one id per line (blank lines ignored), or ``-`` for stdin.
    vectors : bool
        Also return the vectors.

    Returns
    -------
    GetResult
        An id that no live row has is listed in ``missing``; it is not an error.

    Raises
    ------
    InvalidInputError
        No ids given, or an id that is not an integer in an integer-id index.
    IndexNotFoundError, CorruptIndexError
    """
    view = IndexView(index)
    raw = list(id)
    if ids_file is not None:
        raw.extend(_read_ids_file(ids_file))
    if not raw:
        raise InvalidInputError("no ids to get; pass --id or --ids-file")
    asked = _parse_ids(raw, view.settings.id_type)
    _, first = np.unique(asked, return_index=True)
    keys = asked[np.sort(first)]  # each id once, in the order asked
    found_keys, vecs, attrs = [], [], []
    for src in view.sources():
        pos = np.flatnonzero(src.live & np.isin(src.ids, keys))
        if pos.size:
            found_keys.append(np.asarray(src.ids)[pos])
            if vectors:
                vecs.append(np.array(src.vectors[pos], np.float32))
            cols = {name: col.take(pos) for name in view.schema if (col := src.column(name)) is not None}
            attrs.extend(row_attributes(cols, pos.size))
    if not found_keys:
        empty = np.zeros((0, view.settings.dim), np.float32) if vectors else None
        return GetResult(str(index), [], empty, [], keys.tolist())
    got = np.concatenate(found_keys)
    # A live id is in one source only (the view hides older writes), so ``got`` is unique.
    order = np.argsort(got, kind="stable")
    at = np.searchsorted(got[order], keys)
    hit = (at < got.size) & (got[order][np.minimum(at, got.size - 1)] == keys)
    take = order[at[hit]]
    return GetResult(
        str(index),
        got[take].tolist(),
        np.concatenate(vecs)[take] if vectors else None,
        [attrs[i] for i in take.tolist()],
        keys[~hit].tolist(),
    )
