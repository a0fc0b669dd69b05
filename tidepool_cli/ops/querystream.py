"""Query vectors from JSON lines on a pipe, batched by what has already arrived.

``tidepool query --input -`` reads its queries here when standard input holds JSON lines,
so an interactive producer gets each answer before it writes the next query, while a
pipe fed from a file still gets large batches.
"""

from __future__ import annotations

import json
import select
import sys
from collections.abc import Iterator

import numpy as np

from tidepool_cli.errors import InvalidInputError

READ_BYTES = 1 << 16
"""Bytes asked of the pipe per read (returns early with whatever has arrived)."""


def stdin_is_lines() -> bool:
    """Whether standard input starts like JSON lines (an object or a bare list), or is empty."""
    stream = sys.stdin.buffer
    try:
        stream.fileno()
    except (OSError, ValueError, AttributeError):  # not a file descriptor (an in-memory test stream)
        return False
    if not hasattr(stream, "peek") or not hasattr(stream, "read1"):
        return False
    head = stream.peek(1)[:64].lstrip()
    return head[:1] in (b"{", b"[", b"")


def stream_lines(stream, max_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """Query vectors from a stream of JSON lines, batched by what has already arrived.

    Each line is ``{"vector": [...]}`` (other fields ignored) or a bare ``[...]`` list
    (the ``--vector`` form). Complete lines are collected while more input is ready
    to read without waiting; as soon as none is, they are yielded as one batch, so a
    line written by an interactive producer is answered before the next one is read,
    and a pipe fed from a file still gets large batches.

    Parameters
    ----------
    stream : binary buffered stream (standard input)
    max_rows : int
        Largest batch.

    Yields
    ------
    (first, vectors) : (int, (m, d) float32)
        Number of the batch's first query, and its vectors.

    Raises
    ------
    InvalidInputError
        A line that is not JSON, not a vector, or of another length than the first.
    """
    fd = stream.fileno()
    pending = b""
    lines: list[bytes] = []
    first, lineno = 0, 0
    eof = False
    while not eof or lines:
        ready = not eof and (not lines or select.select([fd], [], [], 0)[0])
        if ready and len(lines) < max_rows:
            chunk = stream.read1(READ_BYTES)
            if not chunk:
                eof = True
                if pending.strip():
                    lines.append(pending)
                pending = b""
            else:
                parts = (pending + chunk).split(b"\n")
                pending = parts.pop()
                lines.extend(p for p in parts if p.strip())
            if not eof and len(lines) < max_rows:
                continue
        if not lines:
            continue
        batch, lines = lines[:max_rows], lines[max_rows:]
        yield first, _parse_lines(batch, lineno)
        first += len(batch)
        lineno += len(batch)


def _parse_lines(lines: list[bytes], before: int) -> np.ndarray:
    """(m, d) float32 vectors of JSON lines; ``before`` lines came earlier (for messages)."""
    try:
        objs = json.loads(b"[" + b",".join(lines) + b"]")
    except ValueError:
        for i, line in enumerate(lines):
            try:
                json.loads(line)
            except ValueError as exc:
                raise InvalidInputError(f"standard input: query {before + i + 1}: invalid JSON ({exc.msg})") from None
        raise InvalidInputError("standard input: invalid JSON") from None
    vectors = []
    for i, obj in enumerate(objs):
        vec = obj.get("vector") if isinstance(obj, dict) else obj
        if not isinstance(vec, list):
            raise InvalidInputError(f"standard input: query {before + i + 1}: expected {{\"vector\": [...]}} or a JSON list")
        vectors.append(vec)
    try:
        arr = np.array(vectors, dtype=np.float32)
    except (ValueError, TypeError):
        raise InvalidInputError(f"standard input: queries {before + 1}-{before + len(lines)}: vectors of different lengths or non-numeric values") from None
    if arr.ndim != 2:
        raise InvalidInputError(f"standard input: query {before + 1}: a vector must be a flat list of numbers")
    return arr
