"""Round trips, size guarantees and corruption handling of the posting-list ID codecs."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidepool_cli.engine.idcodec import (
    CODEC_NAMES,
    DEFAULT_CODEC,
    MAX_UNIVERSE,
    IdCodec,
    decode_list,
    decode_lists,
    elias_fano_access,
    encode_lists,
    get_codec,
    set_bound_bits,
)
from tidepool_cli.engine.idcodec.elias_fano import ef_layout
from tidepool_cli.errors import CorruptIndexError, InvalidInputError

N_BIG = 1_000_000


def roundtrip(name: str, ids, universe: int) -> bytes:
    codec = get_codec(name)
    payload = codec.encode(np.asarray(ids), universe)
    assert isinstance(payload, bytes)
    out = codec.decode(payload, len(ids), universe)
    assert out.dtype == np.uint32
    np.testing.assert_array_equal(out, np.sort(np.asarray(ids, dtype=np.int64)))
    return payload


def random_set(rng: np.random.Generator, universe: int, n: int) -> np.ndarray:
    if universe <= 10 * N_BIG:
        return rng.choice(universe, size=n, replace=False)
    ids = np.unique(rng.integers(0, universe, size=2 * n))
    return rng.permutation(ids)[:n]


def posting_lists(seed: int, universe: int, nlist: int) -> list[np.ndarray]:
    """A random partition of [0, universe) into nlist lists, like an IVF assignment."""
    rng = np.random.default_rng(seed)
    return np.array_split(rng.permutation(universe), nlist)


# --- interface ------------------------------------------------------------------------


def test_registry_and_protocol():
    assert CODEC_NAMES == ("ans", "roc", "elias-fano", "raw")
    assert DEFAULT_CODEC == CODEC_NAMES[0]
    for name in CODEC_NAMES:
        codec = get_codec(name)
        assert codec.name == name
        assert isinstance(codec, IdCodec)


@pytest.mark.parametrize("name", ["", "ANS", "gzip", None, 3])
def test_unknown_codec_is_invalid_input(name):
    with pytest.raises(InvalidInputError):
        get_codec(name)


def test_set_bound_bits_matches_exact_binomial():
    for universe, n in [(10, 3), (1000, 17), (1000, 500), (64, 63), (N_BIG, 977)]:
        assert set_bound_bits(n, universe) == pytest.approx(math.log2(math.comb(universe, n)), rel=1e-9)
    assert set_bound_bits(0, 0) == 0.0
    assert set_bound_bits(0, 7) == 0.0
    assert set_bound_bits(7, 7) == 0.0
    assert set_bound_bits(1, MAX_UNIVERSE) == pytest.approx(math.log2(MAX_UNIVERSE))
    for n, universe in [(-1, 5), (6, 5), (0, -1), (0, MAX_UNIVERSE + 1), (1.5, 5)]:
        with pytest.raises(InvalidInputError):
            set_bound_bits(n, universe)


# --- round trips ----------------------------------------------------------------------

ADVERSARIAL = [
    ("empty", 1000, []),
    ("empty universe", 0, []),
    ("N=1 empty", 1, []),
    ("N=1 full", 1, [0]),
    ("N=2 first", 2, [0]),
    ("N=2 last", 2, [1]),
    ("N=2 full", 2, [1, 0]),
    ("single zero", 1000, [0]),
    ("single last", 1000, [999]),
    ("full universe", 300, list(range(300))[::-1]),
    ("all but one", 300, [i for i in range(300) if i != 123]),
    ("run at start", N_BIG, list(range(500))),
    ("run at end", N_BIG, list(range(N_BIG - 500, N_BIG))),
    ("run in middle", N_BIG, list(range(400_000, 401_000))),
    ("two runs", 10_000, list(range(100, 200)) + list(range(9_000, 9_050))),
    ("every other", 2_000, list(range(0, 2_000, 2))),
    ("ends only", N_BIG, [0, N_BIG - 1]),
    ("max universe ends", MAX_UNIVERSE, [0, MAX_UNIVERSE - 1]),
    ("max universe last", MAX_UNIVERSE, [MAX_UNIVERSE - 1]),
    ("max universe run", MAX_UNIVERSE, list(range(MAX_UNIVERSE - 300, MAX_UNIVERSE))),
    ("huge gaps", MAX_UNIVERSE, [5, 1 << 20, 1 << 28, 1 << 30, MAX_UNIVERSE - 2]),
]


@pytest.mark.parametrize("name", CODEC_NAMES)
@pytest.mark.parametrize("case", ADVERSARIAL, ids=[c[0] for c in ADVERSARIAL])
def test_adversarial_sets_round_trip(name, case):
    _, universe, ids = case
    roundtrip(name, np.asarray(ids, dtype=np.int64), universe)


@pytest.mark.parametrize("name", CODEC_NAMES)
@pytest.mark.parametrize(
    "universe,n",
    [(10, 3), (100, 50), (100, 99), (1000, 1), (1000, 700), (65_536, 4_096), (N_BIG, 977), (N_BIG, 20_000),
     (MAX_UNIVERSE, 64), (MAX_UNIVERSE, 2_000)],
)
def test_random_sets_round_trip(name, universe, n):
    rng = np.random.default_rng(universe + n)
    roundtrip(name, random_set(rng, universe, n), universe)


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_clustered_sets_round_trip(name):
    rng = np.random.default_rng(7)
    centres = rng.integers(0, N_BIG - 5_000, size=20)
    ids = np.unique((centres[:, None] + rng.geometric(0.05, size=(20, 100)).cumsum(axis=1)).ravel())
    roundtrip(name, rng.permutation(ids), N_BIG)


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_order_invariance_and_canonical_payload(name):
    rng = np.random.default_rng(3)
    ids = rng.choice(50_000, size=300, replace=False)
    codec = get_codec(name)
    reference = codec.encode(np.sort(ids), 50_000)
    for _ in range(3):
        shuffled = rng.permutation(ids)
        assert codec.encode(shuffled, 50_000) == reference
        np.testing.assert_array_equal(codec.decode(reference, ids.size, 50_000), np.sort(ids))


@pytest.mark.parametrize("name", CODEC_NAMES)
@pytest.mark.parametrize("dtype", [np.int32, np.uint32, np.int64, np.uint64, np.uint16])
def test_integer_dtypes_and_payload_types(name, dtype):
    ids = np.array([9, 2, 700, 31, 64], dtype=dtype)
    codec = get_codec(name)
    payload = codec.encode(ids, 1_000)
    assert payload == codec.encode(ids.astype(np.int64).tolist(), 1_000)
    for form in (payload, memoryview(payload), np.frombuffer(payload, dtype=np.uint8)):
        np.testing.assert_array_equal(codec.decode(form, 5, 1_000), [2, 9, 31, 64, 700])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), universe=st.one_of(st.integers(1, 200), st.integers(1, MAX_UNIVERSE)))
def test_property_round_trip(data, universe):
    ids = data.draw(
        st.lists(st.integers(0, universe - 1), unique=True, max_size=min(universe, 150)), label="ids"
    )
    for name in CODEC_NAMES:
        roundtrip(name, np.asarray(ids, dtype=np.int64), universe)


@settings(max_examples=40, deadline=None)
@given(universe=st.integers(1, 3_000), density=st.floats(0.0, 1.0), seed=st.integers(0, 2**32 - 1))
def test_property_dense_and_sparse(universe, density, seed):
    rng = np.random.default_rng(seed)
    ids = np.flatnonzero(rng.random(universe) < density)
    for name in CODEC_NAMES:
        roundtrip(name, rng.permutation(ids), universe)


# --- invalid arguments ----------------------------------------------------------------


@pytest.mark.parametrize("name", CODEC_NAMES)
@pytest.mark.parametrize(
    "ids,universe",
    [
        ([1, 2, 2], 10),  # duplicate
        ([1, 10], 10),  # out of range
        ([-1, 3], 10),  # negative
        ([[1, 2]], 10),  # 2-D
        ([1.0, 2.0], 10),  # float
        ([True, False], 10),  # bool is not an ID
        ([1], MAX_UNIVERSE + 1),  # universe too large
        ([1], -5),
        ([1], 10.0),
        (np.array([2**63 + 5], dtype=np.uint64), 10),  # must not wrap through int64
    ],
)
def test_encode_rejects_bad_input(name, ids, universe):
    with pytest.raises(InvalidInputError):
        get_codec(name).encode(np.asarray(ids), universe)


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_decode_rejects_bad_arguments(name):
    codec = get_codec(name)
    payload = codec.encode(np.array([1, 5]), 10)
    for n, universe in [(11, 10), (-1, 10), (2, MAX_UNIVERSE + 1), (2.0, 10)]:
        with pytest.raises(InvalidInputError):
            codec.decode(payload, n, universe)
    with pytest.raises(InvalidInputError):
        codec.decode(np.zeros(4, dtype=np.int32), 2, 10)
    with pytest.raises(InvalidInputError):
        codec.decode("not bytes", 2, 10)


# --- sizes ----------------------------------------------------------------------------


def test_sizes_against_the_set_bound():
    """N = 1e6 in 1,024 random lists (about 977 IDs each): the planning workload."""
    lists = posting_lists(11, N_BIG, 1024)[:48]
    for ids in lists:
        n = ids.size
        bound = set_bound_bits(n, N_BIG)
        ans = 8 * len(get_codec("ans").encode(ids, N_BIG))
        assert ans / n <= 1.005 * bound / n + 32 / n
        ef = 8 * len(get_codec("elias-fano").encode(ids, N_BIG))
        # EF: at most 0.557 bits/ID over the bound for N/n >= 2, plus < 8 bits of padding.
        assert ef / n <= bound / n + 0.6 + 8 / n
        roc = 8 * len(get_codec("roc").encode(ids, N_BIG))
        assert roc <= bound + 24
        assert len(get_codec("raw").encode(ids, N_BIG)) == 4 * n


def test_ans_stays_near_bound_across_shapes():
    rng = np.random.default_rng(5)
    for universe, n in [(100_000, 316), (10_000, 5_000), (10_000, 9_000), (MAX_UNIVERSE, 5_000), (N_BIG, 60_000)]:
        ids = random_set(rng, universe, n)
        bits = 8 * len(get_codec("ans").encode(ids, universe))
        assert bits <= 1.005 * set_bound_bits(n, universe) + 40


def test_roc_stays_near_bound_across_shapes():
    rng = np.random.default_rng(6)
    for universe, n in [(100_000, 316), (1_000, 100), (1_000, 900), (MAX_UNIVERSE, 1_000)]:
        ids = random_set(rng, universe, n)
        bits = 8 * len(get_codec("roc").encode(ids, universe))
        assert bits <= set_bound_bits(n, universe) + 32


def test_elias_fano_size_is_the_textbook_formula():
    rng = np.random.default_rng(8)
    for universe, n in [(1, 1), (1000, 1), (1000, 1000), (N_BIG, 977), (MAX_UNIVERSE, 33)]:
        payload = get_codec("elias-fano").encode(random_set(rng, universe, n), universe)
        low_bits, high_bits, nbytes = ef_layout(n, universe)
        assert low_bits == int(math.floor(math.log2(universe / n)))
        assert len(payload) == nbytes == math.ceil((n + ((universe - 1) >> low_bits) + n * low_bits) / 8)


def test_trivial_sets_have_empty_payloads():
    for name in ("ans", "roc"):
        assert get_codec(name).encode(np.arange(500), 500) == b""
        assert get_codec(name).encode(np.array([], dtype=np.int64), 500) == b""


# --- random access --------------------------------------------------------------------


def test_elias_fano_access_matches_decode():
    rng = np.random.default_rng(9)
    for universe, n in [(N_BIG, 977), (1000, 1000), (MAX_UNIVERSE, 300), (17, 5), (1, 1)]:
        ids = np.sort(random_set(rng, universe, n))
        payload = get_codec("elias-fano").encode(ids, universe)
        positions = rng.integers(0, n, size=400)
        np.testing.assert_array_equal(elias_fano_access(payload, n, universe, positions), ids[positions])
        np.testing.assert_array_equal(elias_fano_access(payload, n, universe, np.arange(n)), ids)
        assert elias_fano_access(payload, n, universe, np.array([], dtype=np.int64)).size == 0


def test_elias_fano_access_rejects_bad_positions():
    payload = get_codec("elias-fano").encode(np.array([3, 8, 9]), 10)
    for positions in ([3], [-1], [[0]], [0.5]):
        with pytest.raises(InvalidInputError):
            elias_fano_access(payload, 3, 10, np.asarray(positions))
    with pytest.raises(CorruptIndexError):
        elias_fano_access(payload[:-1], 3, 10, np.array([0]))


# --- blobs, CRCs and corruption -------------------------------------------------------


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_encode_lists_layout(name):
    lists = posting_lists(12, 20_000, 16) + [np.array([], dtype=np.int64)]
    blob, offsets, crcs = encode_lists(name, lists, 20_000)
    assert offsets.dtype == np.uint64 and offsets.shape == (len(lists) + 1,)
    assert crcs.dtype == np.uint32 and crcs.shape == (len(lists),)
    assert offsets[0] == 0 and offsets[-1] == len(blob)
    for i, ids in enumerate(lists):
        payload = blob[int(offsets[i]) : int(offsets[i + 1])]
        assert zlib.crc32(payload) == crcs[i]
        out = decode_list(name, blob, offsets, crcs, i, ids.size, 20_000)
        np.testing.assert_array_equal(out, np.sort(ids))


@pytest.mark.parametrize("name", CODEC_NAMES)
@pytest.mark.parametrize("universe", [1, 2, 1_000, 50_000, MAX_UNIVERSE])
def test_decode_lists_equals_decoding_one_by_one(name, universe):
    rng = np.random.default_rng(universe % 97)
    sizes = [0, 1, min(universe, 2), min(universe, 37), min(universe, 300), universe if universe <= 1_000 else 5]
    lists = [random_set(rng, universe, n) for n in sizes]
    blob, offsets, crcs = encode_lists(name, lists, universe)
    order = [3, 0, 5, 1, 4, 2, 3]  # any order, repeats allowed
    out = decode_lists(name, blob, offsets, crcs, order, [lists[i].size for i in order], universe)
    for i, got in zip(order, out):
        assert got.dtype == np.uint32
        np.testing.assert_array_equal(got, np.sort(lists[i]))
    assert decode_lists(name, blob, offsets, crcs, [], [], universe) == []
    with pytest.raises(InvalidInputError, match="sizes"):
        decode_lists(name, blob, offsets, crcs, [0, 1], [lists[0].size], universe)


def test_decode_lists_names_a_corrupt_list_whose_crc_matches():
    lists = posting_lists(15, 50_000, 4)  # as in the test above, where list 0 fails its count
    blob, offsets, crcs = encode_lists("ans", lists, 50_000)
    order = [1, 2, 0, 3]
    ns = [lists[i].size + (i == 0) for i in order]
    with pytest.raises(CorruptIndexError, match="posting list 0"):
        decode_lists("ans", blob, offsets, crcs, order, ns, 50_000)


def test_encode_lists_names_the_bad_list():
    with pytest.raises(InvalidInputError, match="posting list 1"):
        encode_lists("ans", [np.array([1, 2]), np.array([3, 3])], 10)
    blob, offsets, crcs = encode_lists("raw", [], 10)
    assert blob == b"" and offsets.tolist() == [0] and crcs.size == 0


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_decode_list_detects_flipped_bytes(name):
    lists = posting_lists(13, 50_000, 8)
    blob, offsets, crcs = encode_lists(name, lists, 50_000)
    rng = np.random.default_rng(14)
    for _ in range(20):
        damaged = bytearray(blob)
        at = int(rng.integers(len(blob)))
        damaged[at] ^= 1 << int(rng.integers(8))
        victim = int(np.searchsorted(offsets, at, side="right")) - 1
        with pytest.raises(CorruptIndexError, match=f"posting list {victim}"):
            decode_list(name, bytes(damaged), offsets, crcs, victim, lists[victim].size, 50_000)
        other = (victim + 1) % len(lists)
        out = decode_list(name, bytes(damaged), offsets, crcs, other, lists[other].size, 50_000)
        np.testing.assert_array_equal(out, np.sort(lists[other]))


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_decode_list_detects_truncation_and_bad_metadata(name):
    lists = posting_lists(15, 50_000, 4)
    blob, offsets, crcs = encode_lists(name, lists, 50_000)
    last = len(lists) - 1
    with pytest.raises(CorruptIndexError, match=f"posting list {last}"):
        decode_list(name, blob[:-3], offsets, crcs, last, lists[last].size, 50_000)
    with pytest.raises(CorruptIndexError):
        decode_list(name, blob, offsets[:-1], crcs, 0, lists[0].size, 50_000)
    bad_crcs = crcs.copy()
    bad_crcs[2] ^= 1
    with pytest.raises(CorruptIndexError, match="posting list 2: CRC32"):
        decode_list(name, blob, offsets, bad_crcs, 2, lists[2].size, 50_000)
    for list_id in (-1, len(lists), 1.0, True):
        with pytest.raises(InvalidInputError):
            decode_list(name, blob, offsets, crcs, list_id, 10, 50_000)
    # A CRC that matches but a count that does not is caught by the codec itself.
    if name != "roc":  # roc decodes any count; its guard then sees an invalid set
        with pytest.raises(CorruptIndexError, match="posting list 0"):
            decode_list(name, blob, offsets, crcs, 0, lists[0].size + 1, 50_000)


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_corrupt_payload_never_yields_an_invalid_set(name):
    """Without the CRC, damage must raise CorruptIndexError or give a valid set, never crash."""
    rng = np.random.default_rng(16)
    codec = get_codec(name)
    raised = 0
    for trial in range(60):
        universe = int(rng.choice([2, 50, 1_000, N_BIG, MAX_UNIVERSE]))
        n = int(rng.integers(1, min(universe, 400) + 1))
        payload = bytearray(codec.encode(random_set(rng, universe, n), universe))
        mode = trial % 4
        if mode == 0 and payload:
            payload[int(rng.integers(len(payload)))] ^= 1 << int(rng.integers(8))
        elif mode == 1 and payload:
            del payload[int(rng.integers(len(payload))) :]
        elif mode == 2:
            payload += bytes([int(rng.integers(1, 256))])
        else:
            payload = bytearray(rng.integers(0, 256, size=len(payload) + 3, dtype=np.uint8).tobytes())
        try:
            out = codec.decode(bytes(payload), n, universe)
        except CorruptIndexError:
            raised += 1
            continue
        assert out.dtype == np.uint32 and out.shape == (n,)
        assert out[-1] < universe and np.all(np.diff(out.astype(np.int64)) > 0)
    if name in ("elias-fano", "raw"):
        assert raised >= 30  # every length change is caught structurally


def test_golden_payloads():
    """The byte formats are part of the index format: pin them (docs/IDCODEC.md)."""
    ids = np.array([3, 17, 18, 250, 999, 4_000, 70_001])
    expected = {
        "ans": "e7700300d7a7091b1de80cee50",
        "roc": "a69c2cdc33347a418a35b36001",
        "elias-fano": "3f401800114002e883f301fae222",
        "raw": "030000001100000012000000fa000000e7030000a00f000071110100",
    }
    for name, hex_payload in expected.items():
        assert get_codec(name).encode(ids, 100_000).hex() == hex_payload, name
