"""Publishing a generation: the one sequence every manifest change goes through.

Under the writer lock: read CURRENT, let the caller check the generation it built on and
derive the successor's changes from the *current* manifest, add the replaced manifest
and the caller's replaced files to the obsolete list, re-check that every file the
successor names for the first time exists as a regular file with its recorded size, and
write the manifest and CURRENT atomically. Garbage collection may then run under the
same lock. Compaction and every index build publish through :func:`publish`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tidepool_cli.errors import ConflictError, CorruptIndexError
from tidepool_cli.storage.gc import GcResult, collect_garbage
from tidepool_cli.storage.layout import Layout
from tidepool_cli.storage.manifest import Manifest, read_current, write_manifest
from tidepool_cli.storage.safe import regular_file

Update = Callable[[Manifest], Mapping[str, Any] | None]
"""Given the current manifest, the successor's field changes (``obsolete`` lists only the
newly replaced paths), or None when there is nothing to publish. Raises to refuse
(e.g. :class:`~tidepool_cli.errors.ConflictError` when the generation it built on moved)."""


@dataclass(frozen=True)
class Published:
    """Outcome of :func:`publish`.

    Attributes
    ----------
    manifest : Manifest
        The current generation afterwards (the new one, or the unchanged current one).
    changed : bool
        True if a new generation was written.
    gc : GcResult
        What garbage collection removed (empty when not asked for).
    """

    manifest: Manifest
    changed: bool
    gc: GcResult


def publish(
    layout: Layout,
    purpose: str,
    lock_timeout: float,
    update: Update,
    *,
    discard: Callable[[], None] = lambda: None,
    grace: float | None = None,
) -> Published:
    """Publish the successor of the current generation (see the module docstring).

    Parameters
    ----------
    layout : Layout
    purpose : str
        Shown to writers waiting for the lock ("compact", "build-hnsw").
    lock_timeout : float
        Seconds to wait for the writer lock.
    update : callable(Manifest) -> mapping or None
        See :data:`Update`.
    discard : callable
        Removes the caller's new files; called when nothing was published (an error
        before the manifest write, or ``update`` returning None). Once the manifest write
        begins, new files are left for garbage collection instead.
    grace : float, optional
        Run garbage collection with this grace period after publishing.

    Returns
    -------
    Published

    Raises
    ------
    ConflictError
        A new file vanished or changed size before publication (nothing published).
    LockTimeoutError, StorageIOError, CorruptIndexError, and whatever ``update`` raises.
    """
    writing = False
    try:
        with layout.lock(purpose, lock_timeout):
            current = read_current(layout)
            changes = update(current)
            if changes is None:
                discard()
                gc = collect_garbage(layout, current, grace) if grace is not None else GcResult()
                return Published(current, False, gc)
            changes = dict(changes)
            now = time.time()
            prev = [(layout.rel(layout.manifest_path(current.generation)), now)] if current.generation else []
            replaced = [(rel, now) for rel in changes.pop("obsolete", ())]
            still = tuple((rel, t) for rel, t in current.obsolete if layout.path(rel, "obsolete list").exists())
            new = current.successor(**changes, obsolete=still + tuple(prev + replaced))
            _check_new_files(layout, current, new)
            writing = True
            write_manifest(layout, new)
            gc = collect_garbage(layout, new, grace) if grace is not None else GcResult()
            return Published(new, True, gc)
    except BaseException:
        if not writing:
            discard()
        raise


def _check_new_files(layout: Layout, current: Manifest, new: Manifest) -> None:
    """Every file ``new`` names that ``current`` does not exists with its recorded size."""
    old = current.referenced_paths()
    for seg in new.segments:
        for ref in seg.files():
            if ref.path in old:
                continue
            try:
                size = regular_file(layout.root, layout.path(ref.path), ref.path).st_size
            except CorruptIndexError as exc:
                raise ConflictError(f"{exc}: it was removed before it could be published; nothing changed, run the command again") from None
            if size != ref.bytes:
                raise ConflictError(f"{ref.path}: is {size} bytes, expected {ref.bytes}; nothing changed, run the command again")
