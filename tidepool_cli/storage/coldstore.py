"""The cold store: every original vector of a segment, bit-perfect, in zstd blocks addressable by row.

Whatever stage a row is in (Adult f32, Nymph 8-bit, Larval 1-4-bit), its original bytes
stay here, so promoting a row back to Adult restores it exactly. Rows are cut into blocks
of ``block_rows`` consecutive rows; each block is byte-shuffled (float byte planes, see
:mod:`~tidepool_cli.engine.byteshuffle`) and compressed on its own by zstd, so reading
one row decompresses only its block. A dictionary trained on the segment's own blocks
(``zstandard.train_dictionary``) is kept when it saves more bytes than it costs.

File (container kind ``COLD``, version 1; see :mod:`~tidepool_cli.storage.container`):
metadata ``{"rows", "cols", "dtype", "block_rows", "level", "shuffle", "dictionary"}``
and the sections

=========  ======================  ================================================
section    dtype, shape            contents
=========  ======================  ================================================
offsets    ``<u8`` (blocks + 1,)   byte offset of each block in ``blocks``
crcs       ``<u4`` (blocks,)       CRC-32 of each stored (compressed) block
dict       ``|u1`` (k,)            the zstd dictionary, empty when none pays
blocks     ``|u1`` (bytes,)        the zstd frames, one per block (bulk)
=========  ======================  ================================================

The small sections are checked on open; each block is checked against its CRC-32 when it
is read, and a damaged one raises :class:`~tidepool_cli.errors.CorruptIndexError` naming it.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zstandard as zstd

from tidepool_cli.engine.byteshuffle import shuffle, unshuffle
from tidepool_cli.errors import CorruptIndexError, InvalidInputError
from tidepool_cli.storage.container import Container, open_container, write_container

KIND, VERSION = b"COLD", 1
DEFAULT_LEVEL = 3
"""zstd level: zstd's own default; 19 saves 5-10 % more at 10-50x the write time (docs/METAMORPH.md)."""
BLOCK_BYTES = 16384
"""Raw bytes per block by default: a row read decompresses about this much."""
DICT_BYTES = 16384
"""Size of a trained dictionary."""
DICT_MIN_BLOCKS = 16
"""Below this many blocks no dictionary is tried (it cannot pay for itself)."""
DICT_TRAIN_BLOCKS = 128
DICT_PROBE_BLOCKS = 64


@dataclass(frozen=True)
class ColdStoreInfo:
    """What :func:`write_coldstore` wrote.

    Attributes
    ----------
    nbytes : int
        File size in bytes.
    crc32 : int
        The container's header CRC (the manifest's checksum of the file).
    raw_bytes : int
        Bytes of the vectors before compression.
    block_bytes : int
        Bytes of the compressed blocks.
    dict_bytes : int
        Bytes of the dictionary (0: none).
    block_rows : int
    blocks : int
    """

    nbytes: int
    crc32: int
    raw_bytes: int
    block_bytes: int
    dict_bytes: int
    block_rows: int
    blocks: int

    @property
    def ratio(self) -> float:
        """Raw bytes over compressed bytes (blocks plus dictionary)."""
        return self.raw_bytes / max(1, self.block_bytes + self.dict_bytes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, plus ``ratio``."""
        return {**{k: getattr(self, k) for k in self.__dataclass_fields__}, "ratio": self.ratio}


def default_block_rows(cols: int, itemsize: int) -> int:
    """Rows per block so that a block holds about :data:`BLOCK_BYTES` raw bytes (at least 1)."""
    return max(1, BLOCK_BYTES // max(1, cols * itemsize))


def _raw_blocks(x: np.ndarray, block_rows: int, do_shuffle: bool) -> list[bytes]:
    return [(shuffle(x[s : s + block_rows]) if do_shuffle else np.ascontiguousarray(x[s : s + block_rows]).reshape(-1).view(np.uint8)).tobytes()
            for s in range(0, x.shape[0], block_rows)]


def _train(raw: list[bytes], level: int, force: bool) -> zstd.ZstdCompressionDict | None:
    """A dictionary trained on every other block, kept if it pays on the blocks held out."""
    if len(raw) < (2 if force else DICT_MIN_BLOCKS):
        return None
    train = raw[:: 2][:DICT_TRAIN_BLOCKS]
    size = min(DICT_BYTES, max(256, sum(map(len, train)) // 8))
    try:
        d = zstd.train_dictionary(size, train, level=level)
    except zstd.ZstdError:  # too few or too uniform samples to learn from
        return None
    if force:
        return d
    probe = raw[1 :: 2][:DICT_PROBE_BLOCKS]
    plain, with_dict = zstd.ZstdCompressor(level=level), zstd.ZstdCompressor(level=level, dict_data=d)
    saved = sum(len(plain.compress(b)) - len(with_dict.compress(b)) for b in probe)
    return d if saved * len(raw) / len(probe) > len(d.as_bytes()) else None


def write_coldstore(
    path: Path,
    x: np.ndarray,
    *,
    level: int = DEFAULT_LEVEL,
    block_rows: int | None = None,
    shuffle_bytes: bool = True,
    dictionary: bool | None = None,
) -> ColdStoreInfo:
    """Write the cold store of ``x`` atomically.

    Parameters
    ----------
    path : Path
        File to create (atomically: temporary file, fsync, rename).
    x : (n, d) array of a fixed-width dtype (float32 vectors; a memmap is fine)
        The original vectors; stored byte for byte.
    level : int
        zstd level, 1 to 22.
    block_rows : int, optional
        Rows per block (default: :func:`default_block_rows`).
    shuffle_bytes : bool
        Byte-shuffle each block before compression.
    dictionary : bool or None
        None: train a dictionary and keep it only if it saves more than its own size;
        True: always use a trained one (when training succeeds); False: never.

    Returns
    -------
    ColdStoreInfo

    Raises
    ------
    InvalidInputError
        ``x`` is not 2-D, ``level`` outside 1..22, ``block_rows`` below 1.
    StorageIOError
        The write failed; nothing was created.
    """
    if x.ndim != 2:
        raise InvalidInputError(f"cold store input must be 2-D (rows, dims), got shape {x.shape}")
    if not 1 <= level <= 22:
        raise InvalidInputError(f"zstd level must be 1 to 22, got {level}")
    n, d = x.shape
    block_rows = default_block_rows(d, x.dtype.itemsize) if block_rows is None else block_rows
    if block_rows < 1:
        raise InvalidInputError(f"block_rows must be at least 1, got {block_rows}")
    dtype = x.dtype.newbyteorder("<") if x.dtype.byteorder == ">" else x.dtype
    raw = _raw_blocks(np.asarray(x, dtype=dtype), block_rows, shuffle_bytes)
    zdict = None if dictionary is False else _train(raw, level, bool(dictionary))
    comp = zstd.ZstdCompressor(level=level, dict_data=zdict) if zdict else zstd.ZstdCompressor(level=level)
    frames = [comp.compress(b) for b in raw]
    sizes = np.fromiter((len(f) for f in frames), np.uint64, len(frames))
    offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.uint64)]).astype(np.uint64)
    crcs = np.fromiter((zlib.crc32(f) for f in frames), np.uint32, len(frames))
    dict_bytes = np.frombuffer(zdict.as_bytes(), np.uint8) if zdict else np.zeros(0, np.uint8)
    blob = [np.frombuffer(f, np.uint8) for f in frames] or [np.zeros(0, np.uint8)]  # written part by part, no joined copy
    meta = {"rows": n, "cols": d, "dtype": dtype.str, "block_rows": block_rows, "level": level,
            "shuffle": shuffle_bytes, "dictionary": zdict is not None}
    sections = {"offsets": offsets, "crcs": crcs, "dict": dict_bytes, "blocks": blob}
    nbytes, crc = write_container(path, KIND, VERSION, meta, sections, bulk=("blocks",))
    return ColdStoreInfo(nbytes, crc, int(n * d * dtype.itemsize), int(offsets[-1]), int(dict_bytes.size), block_rows, len(frames))


class ColdStore:
    """A memory-mapped cold store; rows are decompressed block by block on demand.

    Parameters
    ----------
    path : Path
    where : str
        How errors name the file ("segments/seg-000001.ab12.cold").

    Raises
    ------
    CorruptIndexError
        Bad header, small-section checksum, or inconsistent block table.
    UnsupportedFormatError
        Written by a newer layout version.
    """

    def __init__(self, path: Path, where: str):
        c: Container = open_container(path, where, KIND, VERSION, verify="small")
        m = c.meta
        self.where = where
        try:
            self.rows, self.cols, self.block_rows = int(m["rows"]), int(m["cols"]), int(m["block_rows"])
            self.dtype, self.shuffled, self.level = np.dtype(m["dtype"]), bool(m["shuffle"]), int(m["level"])
            has_dict = bool(m["dictionary"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptIndexError(f"{where}: cold store metadata is incomplete ({exc})") from None
        if self.block_rows < 1:
            raise CorruptIndexError(f"{where}: cold store metadata is incomplete (block_rows {self.block_rows})")
        self._offsets, self._crcs, self._blocks = c.array("offsets"), c.array("crcs"), c.array("blocks")
        self.blocks = -(-self.rows // self.block_rows)
        if self._offsets.shape[0] != self.blocks + 1 or self._crcs.shape[0] != self.blocks or int(self._offsets[-1]) != self._blocks.shape[0]:
            raise CorruptIndexError(f"{where}: block table does not match its {self.rows} rows")
        raw_dict = c.array("dict")
        zdict = zstd.ZstdCompressionDict(bytes(raw_dict)) if has_dict else None
        self._dctx = zstd.ZstdDecompressor(dict_data=zdict) if zdict else zstd.ZstdDecompressor()
        self.compressed_bytes = int(self._blocks.shape[0] + raw_dict.shape[0])

    def __len__(self) -> int:
        return self.rows

    def block(self, b: int) -> np.ndarray:
        """Rows of block ``b`` as a new ``(rows in block, cols)`` array.

        Raises
        ------
        CorruptIndexError
            The block fails its CRC-32 or does not decompress to its rows.
        """
        lo, hi = int(self._offsets[b]), int(self._offsets[b + 1])
        frame = self._blocks[lo:hi]
        first = b * self.block_rows
        m = min(self.block_rows, self.rows - first)
        name = f"{self.where}: block {b} (rows {first}..{first + m - 1})"
        if zlib.crc32(frame) != int(self._crcs[b]):
            raise CorruptIndexError(f"{name} fails its checksum")
        want = m * self.cols * self.dtype.itemsize
        try:
            raw = self._dctx.decompress(frame, max_output_size=want)
        except zstd.ZstdError as exc:
            raise CorruptIndexError(f"{name} does not decompress: {exc}") from None
        if len(raw) != want:
            raise CorruptIndexError(f"{name} holds {len(raw)} bytes, expected {want}")
        if self.shuffled:
            return unshuffle(raw, self.dtype, (m, self.cols))
        return np.frombuffer(raw, self.dtype).reshape(m, self.cols).copy()

    def get(self, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` in the given order, decompressing each needed block once.

        Parameters
        ----------
        ids : (k,) int
            Row numbers, 0..rows-1, any order, repeats allowed.

        Returns
        -------
        (k, cols) array of the stored dtype, bit for bit the written rows

        Raises
        ------
        InvalidInputError
            A row outside 0..rows-1.
        CorruptIndexError
            A needed block is damaged.
        """
        ids = np.asarray(ids).astype(np.int64, copy=False).reshape(-1)
        out = np.empty((ids.shape[0], self.cols), self.dtype)
        if ids.size == 0:
            return out
        if ids.min() < 0 or ids.max() >= self.rows:
            raise InvalidInputError(f"{self.where}: row {int(ids.max() if ids.max() >= self.rows else ids.min())} outside 0..{self.rows - 1}")
        blk = ids // self.block_rows
        if blk.min() == blk.max():  # the common single-block fetch, without the grouping
            b = int(blk[0])
            return self.block(b)[ids - b * self.block_rows]
        order = np.argsort(blk, kind="stable")
        uniq, starts = np.unique(blk[order], return_index=True)
        ends = np.append(starts[1:], ids.size)
        for b, s, e in zip(uniq.tolist(), starts.tolist(), ends.tolist()):
            sel = order[s:e]
            out[sel] = self.block(b)[ids[sel] - b * self.block_rows]
        return out

    def read_all(self) -> np.ndarray:
        """Every row, ``(rows, cols)``, decompressed block by block."""
        out = np.empty((self.rows, self.cols), self.dtype)
        for b in range(self.blocks):
            s = b * self.block_rows
            out[s : s + self.block_rows] = self.block(b)
        return out

    def damaged_blocks(self) -> list[int]:
        """Numbers of the blocks whose stored bytes fail their CRC-32 (``stats --verify``)."""
        bad = []
        for b in range(self.blocks):
            if zlib.crc32(self._blocks[int(self._offsets[b]) : int(self._offsets[b + 1])]) != int(self._crcs[b]):
                bad.append(b)
        return bad
