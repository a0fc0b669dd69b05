"""Checksummed JSON documents: ``tidepool.json`` and manifests carry their own CRC-32.

The document's last key is ``"checksum"``, whose value is ``crc32:`` and 8 hex digits: the CRC-32 (zlib
polynomial, 8 lowercase hex digits) of the file's exact bytes with those 8 digits read as
``00000000``. The check works on the bytes as stored, so it needs no canonical
re-serialisation, and a flipped byte anywhere in the file (a key, a value, the
checksum itself) is detected.
"""

from __future__ import annotations

import json
import re
import zlib
from typing import Any

_ZERO = "crc32:00000000"
_FIELD = re.compile(rb'"checksum": "crc32:([0-9a-f]{8})"')


def seal(doc: dict[str, Any], indent: int | None = None) -> bytes:
    """Serialise ``doc`` as JSON ending with its checksum field (see the module docstring)."""
    text = (json.dumps({**doc, "checksum": _ZERO}, indent=indent) + "\n").encode()
    head, sep, tail = text.rpartition(f'"checksum": "{_ZERO}"'.encode())
    crc = zlib.crc32(text)
    return head + f'"checksum": "crc32:{crc:08x}"'.encode() + tail


def check(raw: bytes) -> bool | None:
    """True if ``raw`` holds a checksum field that matches, False if it does not, None if absent."""
    found = list(_FIELD.finditer(raw))
    if not found:
        return None if b'"checksum"' not in raw else False
    m = found[-1]
    zeroed = raw[: m.start(1)] + b"00000000" + raw[m.end(1) :]
    return zlib.crc32(zeroed) == int(m.group(1), 16)
