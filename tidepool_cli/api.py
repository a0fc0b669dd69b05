"""The subcommands whose Python signature is not the ops function's own, with the CLI's flag names.

``tidepool ingest --input F`` is ``tp.ingest(index, input=F)``, ``tidepool delete --id 7``
is ``tp.delete(index, id=[7])``, ``tidepool query --vector V | --input F`` is
``tp.query(index, vector=V)`` or ``tp.query(index, input=F)``. Every other subcommand's
ops function already takes its flags as keywords and is exported as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from tidepool_cli.errors import InvalidInputError
from tidepool_cli.ops.delete import DeleteResult
from tidepool_cli.ops.delete import delete as _delete
from tidepool_cli.ops.ingest import IngestResult
from tidepool_cli.ops.ingest import ingest as _ingest
from tidepool_cli.ops.progress import NULL_PROGRESS, Progress
from tidepool_cli.storage.lock import DEFAULT_LOCK_TIMEOUT


def ingest(
    index: str | Path,
    input: str | Path,
    *,
    input_format: str = "auto",
    metric: str | None = None,
    batch_rows: int | None = None,
    commit_every: int | None = None,
    vector_column: str | None = None,
    id_column: str | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    progress: Progress = NULL_PROGRESS,
) -> IngestResult:
    """Upsert the vectors of the file ``input`` (or ``-``, stdin) into ``index`` (``tidepool ingest``).

    See :func:`tidepool_cli.ops.ingest.ingest` for the parameters, result and errors.
    """
    return _ingest(index, input, input_format=input_format, metric=metric, batch_rows=batch_rows, commit_every=commit_every,
                   lock_timeout=lock_timeout, vector_column=vector_column, id_column=id_column, progress=progress)


def delete(
    index: str | Path,
    id: Sequence[str | int] = (),
    *,
    ids_file: str | Path | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> DeleteResult:
    """Delete the rows with these ids (``tidepool delete``).

    See :func:`tidepool_cli.ops.delete.delete` for the parameters, result and errors.
    """
    return _delete(index, id, ids_file=ids_file, lock_timeout=lock_timeout)


def query(
    index: str | Path,
    vector: np.ndarray | Sequence | None = None,
    *,
    input: str | Path | None = None,
    input_format: str = "auto",
    k: int = 10,
    filter: str | None = None,
    ef_search: int | None = None,
    nprobe: int | None = None,
    exact: bool = False,
    warn: Callable[[str], None] | None = None,
):
    """k nearest neighbours of each query (``tidepool query``).

    Parameters
    ----------
    index : str or Path
    vector : (nq, d) or (d,) array-like, optional
        Queries answered at once.
    input : str or Path, optional
        A query file (any ingest format) or ``-``, answered batch by batch.
    input_format, k, filter, ef_search, nprobe, exact
        As the flags of ``tidepool query``.
    warn : callable(str), optional
        Receives warnings (a damaged sidecar index that is skipped).

    Returns
    -------
    QueryResults, or an iterator of QueryResults (one per batch) for ``input``

    Raises
    ------
    InvalidInputError
        Neither or both of ``vector`` and ``input``; see :class:`~tidepool_cli.ops.query.Searcher`.
    """
    from tidepool_cli.ops.planner import SearchParams
    from tidepool_cli.ops.query import query as _query
    from tidepool_cli.ops.query import query_file

    if (vector is None) == (input is None):
        raise InvalidInputError("give exactly one of vector and input")
    params = SearchParams(exact=exact, ef_search=ef_search, nprobe=nprobe)
    if vector is not None:
        return _query(index, np.asarray(vector), k, filter=filter, params=params, warn=warn)
    return _batches(query_file(index, input, k, input_format=input_format, filter=filter, params=params, warn=warn))


def _batches(results) -> Iterator:
    yield from results
