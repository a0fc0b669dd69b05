"""Replay every reproduction of the "trust first" fault list against the CLI.

Each case builds a small index in a fresh temporary directory, damages or races it the
way the reproduction describes, runs one ``tidepool`` command and compares its exit code
(and, where the README says more, its stderr or the state it leaves) with the README's
documented behaviour. Prints a table (reproduction, expected exit, got exit, ok) and
writes bench/results/fault_replay.json. Runs in a few minutes on 2 cores.

Cases that need privileges the machine lacks (a permission error when running as root,
a tmpfs for a full disk) are reported as skipped, not as passed.

Usage: python bench/fault_replay.py [--threads 2] [--only SUBSTRING]
"""

from __future__ import annotations

import argparse
import os
import sys

_ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
_ap.add_argument("--threads", default="2", help="OMP/OPENBLAS threads for the CLI (default 2)")
_ap.add_argument("--only", default="", help="run only cases whose name contains this")
ARGS = _ap.parse_args()
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = ARGS.threads

import json  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA  # noqa: E402

from tidepool_cli.storage import sealed  # noqa: E402

TP = str(Path(sys.executable).with_name("tidepool"))
BASE = np.load(DATA / "siftsmall" / "base.npy").astype(np.float32)
QUERIES = np.load(DATA / "siftsmall" / "queries.npy").astype(np.float32)
SKIP = "skip"


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
"""As root, permission cases run the CLI as user nobody (root ignores file modes)."""


def tp(*args: str, cwd: Path, stdin: bytes | None = None, timeout: float = 120,
       unprivileged: bool = False) -> tuple[int, str, str]:
    """Run ``tidepool ARGS`` in ``cwd``: (exit code, stdout, stderr); a hang is exit -9."""
    pre = NOBODY if unprivileged and os.geteuid() == 0 else []
    try:
        p = subprocess.run([*pre, TP, *args], cwd=cwd, input=stdin, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -9, "", "timed out (hang)"
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def npy(d: Path, name: str, a: np.ndarray) -> str:
    np.save(d / name, a)
    return name


def index(d: Path, rows: int = 2000, compact: bool = True, name: str = "idx") -> Path:
    """A small siftsmall index (``rows`` rows, compacted into one segment unless told)."""
    tp("ingest", name, "-i", npy(d, "base.npy", BASE[:rows]), "-q", cwd=d)
    if compact:
        tp("compact", name, "-q", cwd=d)
    return d / name


def seg_file(idx: Path) -> Path:
    return next((idx / "segments").glob("*.tpvs"))


def manifest(idx: Path) -> Path:
    return idx / (idx / "CURRENT").read_text().split()[0]


def reseal(path: Path, edit: Callable[[dict], None]) -> None:
    """Edit a checksummed JSON document and seal it again (a hostile, well-formed file)."""
    doc = json.loads(path.read_bytes())
    doc.pop("checksum", None)
    edit(doc)
    path.write_bytes(sealed.seal(doc, indent=1))


def flip(path: Path, offset: int) -> None:
    b = bytearray(path.read_bytes())
    b[offset] ^= 0x40
    path.write_bytes(bytes(b))


def verify(d: Path, name: str = "idx") -> int:
    return tp("stats", name, "--verify", "--json", cwd=d)[0]


# --- each case returns (expected exit, got exit, note); note "" when nothing to add ---

def ivf_ties(d: Path):
    """Duplicate rows within one posting list: IVF with every list probed == exact, ties by id."""
    x = np.repeat(BASE[:100], 3, axis=0)
    tp("ingest", "idx", "-i", npy(d, "x.npy", x), "-q", cwd=d)
    tp("compact", "idx", "-q", cwd=d)
    tp("build-ivf", "idx", "--nlist", "4", "--min-rows", "1", "-q", cwd=d)
    qs = npy(d, "q.npy", x[::7][:20])
    rc1, out1, _ = tp("query", "idx", "-i", qs, "-k", "10", "--exact", cwd=d)
    rc2, out2, err = tp("query", "idx", "-i", qs, "-k", "10", "--nprobe", "4", cwd=d)
    if rc1 or rc2:
        return 0, rc2 or rc1, err.strip()[-200:]
    ids = lambda out: [r["ids"] for r in json.loads(out)["results"]]  # noqa: E731
    same = ids(out1) == ids(out2)
    return 0, 0 if same else 1, "" if same else "IVF ids differ from exact on ties"


def ivf_query(nq: int, stdin: bool, dim: int = 128, hnsw: bool = False):
    def case(d: Path):
        x = BASE[:3000] if dim == 128 else np.random.default_rng(0).standard_normal((600, dim), np.float32)
        tp("ingest", "idx", "-i", npy(d, "x.npy", x), "-q", cwd=d)
        tp("compact", "idx", "-q", cwd=d)
        if hnsw:
            tp("build-hnsw", "idx", "-q", cwd=d)
        rc, _, err = tp("build-ivf", "idx", "-q", *(["--min-rows", "1"] if dim != 128 else []), cwd=d)
        if rc:
            return 0, rc, "build-ivf: " + err.strip()[-200:]
        q = QUERIES[:nq] if dim == 128 else x[:nq].copy()
        np.save(d / "q.npy", q)
        extra = ["--nprobe", "10"] if hnsw else []
        if stdin:
            rc, _, err = tp("query", "idx", "--input", "-", "--input-format", "npy", "-k", "10", *extra,
                            cwd=d, stdin=(d / "q.npy").read_bytes())
        else:
            rc, _, err = tp("query", "idx", "--input", "q.npy", "-k", "10", *extra, cwd=d)
        return 0, rc, err.strip()[-200:]
    return case


def bad_first_ingest(fname: str, content: bytes | np.ndarray, then_ok: bool = True):
    def case(d: Path):
        if isinstance(content, np.ndarray):
            np.save(d / fname, content)
        else:
            (d / fname).write_bytes(content)
        rc, _, err = tp("ingest", "idx", "-i", fname, cwd=d)
        notes = []
        if (d / "idx").exists():
            notes.append("index directory created")
        if "Warning" in err and "RuntimeWarning" in err or "warn" in err.lower() and "Error:" not in err.splitlines()[0]:
            notes.append("warning leaked")
        if then_ok:
            tp("ingest", "idx", "-i", npy(d, "ok.npy", BASE[:50]), "--metric", "cosine", "-q", cwd=d)
            if tp("stats", "idx", "--json", cwd=d)[1].find('"cosine"') < 0:
                notes.append("next ingest with --metric cosine refused")
        got = rc if not notes else 1
        return 4, got, "; ".join(notes) or err.strip().splitlines()[-1][:160]
    return case


def perm_denied(cmd: str):
    def case(d: Path):
        idx = index(d)
        d.chmod(0o777)
        for p in [idx, *idx.rglob("*")]:
            if p.is_dir():
                p.chmod(0o555)
        args = {"ingest": ["-i", "base.npy"], "compact": [], "build-ivf": ["--min-rows", "1"]}[cmd]
        rc, _, err = tp(cmd, "idx", *args, cwd=d, unprivileged=True)
        for p in [idx, *idx.rglob("*")]:
            if p.is_dir():
                p.chmod(0o755)
        return 10, rc, err.strip()[-160:]
    return case


def unreadable(ext: str):
    def case(d: Path):
        d.chmod(0o777)
        f = d / f"x.{ext}"
        if ext == "npy":
            np.save(f, BASE[:10])
        else:
            f.write_text('{"id": 1, "vector": [1, 2]}\n')
        f.chmod(0)
        rc, _, err = tp("ingest", "idx", "-i", f.name, cwd=d, unprivileged=True)
        return 10, rc, err.strip()[-160:]
    return case


def usage(*args: str, needs_index: bool = True):
    def case(d: Path):
        if needs_index:
            index(d, rows=300)
            npy(d, "q.npy", QUERIES[:2])
        rc, _, err = tp(*args, cwd=d)
        return 2, rc, err.strip().splitlines()[-1][:160] if err.strip() else ""
    return case


def closed_pipe(*args: str):
    def case(d: Path):
        index(d, rows=1000, compact=False)
        npy(d, "q.npy", QUERIES[:100])
        p = subprocess.Popen([TP, *args], cwd=d, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        p.stdout.read(100)  # like head -c 100 (JSON is one line: head -n 1 would read it all)
        p.stdout.close()
        err = p.stderr.read().decode(errors="replace")
        rc = p.wait()
        rc = 128 - rc if rc < 0 else rc  # killed by SIGPIPE counts as 141
        rc = 141 if rc == 128 + 13 or rc == 128 - -13 else rc
        return 141, rc, ("stderr not quiet: " + err.strip()[-120:]) if err.strip() else ""
    return case


def flipped_vectors(d: Path):
    idx = index(d)
    s = seg_file(idx)
    flip(s, s.stat().st_size // 2)
    rc, out, err = tp("stats", "idx", "--verify", "--json", cwd=d)
    notes = []
    try:
        doc = json.loads(out)
        if doc.get("live_rows") != 2000:
            notes.append(f"live_rows {doc.get('live_rows')} (2000 readable)")
        if not doc.get("problems"):
            notes.append("no problems named")
    except ValueError:
        notes.append("no JSON report")
    return 5, rc if not notes else 1, "; ".join(notes) or err.strip().splitlines()[-1][:160]


def flipped_vectors_compact(d: Path):
    """Half the rows deleted, so compaction rewrites the damaged segment: it must refuse."""
    idx = index(d, rows=2000)
    (d / "ids.txt").write_text("".join(f"{i}\n" for i in range(1000)))
    tp("delete", "idx", "--ids-file", "ids.txt", "-q", cwd=d)
    s = seg_file(idx)
    flip(s, s.stat().st_size * 3 // 4)
    rc, out, err = tp("compact", "idx", "--grace", "0", cwd=d)
    vrc = verify(d)
    return 5, rc, (err.strip().splitlines()[-1][:120] if err.strip() else "") + f" (then verify {vrc})"


def attrs_before_compaction(d: Path):
    (d / "r.jsonl").write_text("".join(json.dumps({"id": i, "vector": [float(i), 1.0], "attributes": {"color": "red"}}) + "\n" for i in range(5)))
    tp("ingest", "idx", "-i", "r.jsonl", "-q", cwd=d)
    rc, out, _ = tp("stats", "idx", "--json", cwd=d)
    ok = "color" in json.dumps(json.loads(out).get("attributes")) if rc == 0 else False
    return 0, rc if ok else 1, "" if ok else "attributes missing before compaction"


def race_build_hnsw_vs_compact(grace: str):
    def case(d: Path):
        index(d, rows=10000)
        p = subprocess.Popen([TP, "build-hnsw", "idx", "-q"], cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # pause once the build has begun writing its sidecar
        t0 = time.time()
        while time.time() - t0 < 60 and not any((d / "idx").rglob("*.tmp*")) and p.poll() is None:
            time.sleep(0.05)
        if p.poll() is None:
            p.send_signal(signal.SIGSTOP)
        tp("ingest", "idx", "-i", npy(d, "m.npy", BASE[:10]), "-q", cwd=d)
        time.sleep(float(grace) + 0.5)
        tp("compact", "idx", "--grace", grace, "-q", cwd=d)
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
        p.wait(timeout=300)
        rc = verify(d)
        return 0, rc, f"build-hnsw exit {p.returncode}"
    return case


def race_slow_ingest_vs_compact(d: Path):
    index(d, rows=500)
    rows = [json.dumps({"id": 100000 + i, "vector": BASE[i].tolist()}) + "\n" for i in range(60)]
    p = subprocess.Popen([TP, "ingest", "idx", "--input", "-", "--input-format", "jsonl", "--batch-rows", "20", "-q"],
                         cwd=d, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    p.stdin.write("".join(rows[:30]).encode())
    p.stdin.flush()
    time.sleep(1.5)
    tp("compact", "idx", "--grace", "1", "-q", cwd=d)
    time.sleep(1.5)
    tp("compact", "idx", "--grace", "1", "-q", cwd=d)
    p.stdin.write("".join(rows[30:]).encode())
    p.stdin.close()
    rc = p.wait(timeout=120)
    err = p.stderr.read().decode(errors="replace")
    vrc = verify(d)
    return 0, rc if rc else vrc, err.strip()[-160:] if rc else ("verify " + str(vrc))


def wal_index(d: Path) -> Path:
    idx = index(d, rows=500)
    for i in range(3):
        tp("ingest", "idx", "-i", npy(d, f"w{i}.npy", BASE[1000 + 100 * i:1100 + 100 * i]), "-q", cwd=d)
    return idx


def wal_files(idx: Path) -> list[Path]:
    return sorted(p for p in (idx / "wal").glob("*.wal"))


def remove_current(d: Path):
    idx = index(d)
    tp("ingest", "idx", "-i", npy(d, "w.npy", BASE[3000:3010]), "-q", cwd=d)
    (idx / "CURRENT").unlink()
    rc, out, err = tp("count", "idx", cwd=d)
    good = rc == 0 and "Warning" in err and "2010" in out
    return 0, rc if good else (rc or 1), err.strip().splitlines()[0][:160] if err.strip() else f"count {out.strip()}"


def truncate_wal(d: Path):
    idx = wal_index(d)
    w = wal_files(idx)[-1]
    raw = w.read_bytes()
    w.write_bytes(raw[: len(raw) // 2])
    rc, _, err = tp("stats", "idx", "--verify", cwd=d)
    return 5, rc, err.strip().splitlines()[-1][:160] if err.strip() else ""


def truncate_wal_boundary(d: Path):
    """Cut a WAL file after its first record: a record boundary, the worst case."""
    idx = index(d, rows=500)
    tp("ingest", "idx", "-i", npy(d, "w.npy", BASE[1000:1100]), "--batch-rows", "20", "-q", cwd=d)
    w = wal_files(idx)[-1]
    raw = w.read_bytes()
    size = len(raw)
    results = []
    for cut in range(1, 5):  # try cutting after each of the first records
        w.write_bytes(raw[: size * cut // 5])
        results.append(tp("stats", "idx", "--verify", cwd=d)[0])
        results.append(tp("count", "idx", cwd=d)[0])
    got = 5 if all(r == 5 for r in results) else min(results)
    return 5, got, f"verify/count exits at 4 cuts: {results}"


def remove_wal(d: Path):
    idx = wal_index(d)
    wal_files(idx)[1].unlink()
    rc, _, err = tp("stats", "idx", "--verify", cwd=d)
    rc2 = tp("query", "idx", "--vector", json.dumps(BASE[0].tolist()), cwd=d)[0]
    return 5, rc if rc2 == 5 else rc2, err.strip().splitlines()[-1][:160] if err.strip() else ""


def current_variant(kind: str):
    def case(d: Path):
        """A flip is repaired with a Warning; a device or FIFO is refused (hostile directory)."""
        idx = index(d)
        cur = idx / "CURRENT"
        if kind.startswith("flip"):
            raw = bytearray(cur.read_bytes())
            worst = []
            for i in range(len(raw)):
                b = bytearray(raw)
                b[i] ^= 0x80 if i % 2 else 0x01
                cur.write_bytes(bytes(b))
                rc, out, err = tp("count", "idx", cwd=d, timeout=30)
                if rc not in (0, 5) or (rc == 0 and "2000" not in out) or "Traceback" in err:
                    worst.append((i, rc))
            cur.write_bytes(bytes(raw))
            return 0, 0 if not worst else 1, f"{len(raw)} flips; bad: {worst[:5]}"
        cur.unlink()
        if kind == "dev-zero":
            cur.symlink_to("/dev/zero")
        elif kind == "fifo":
            os.mkfifo(cur)
        t = time.time()
        rc, out, err = tp("count", "idx", cwd=d, timeout=30)
        return 5, rc, f"{time.time() - t:.1f} s; " + (err.strip().splitlines()[0][:120] if err.strip() else "")
    return case


def settings_dev_zero(d: Path):
    idx = index(d)
    (idx / "tidepool.json").unlink()
    (idx / "tidepool.json").symlink_to("/dev/zero")
    t = time.time()
    rc, _, err = tp("count", "idx", cwd=d, timeout=30)
    return 5, rc, f"{time.time() - t:.1f} s; " + err.strip()[-120:]


def wal_dir(d: Path):
    idx = wal_index(d)
    w = wal_files(idx)[-1]
    w.unlink()
    w.mkdir()
    rc, _, err = tp("count", "idx", cwd=d)
    return 5, rc, err.strip()[-160:]


def segment_loop(d: Path):
    idx = index(d)
    s = seg_file(idx)
    s.unlink()
    s.symlink_to(s.name)
    rc, _, err = tp("count", "idx", cwd=d)
    return 5, rc, err.strip()[-160:]


def jsonl_ingest(content: bytes, expected: int = 4):
    def case(d: Path):
        (d / "r.jsonl").write_bytes(content)
        rc, _, err = tp("ingest", "idx", "-i", "r.jsonl", cwd=d)
        note = err.strip()[-160:]
        if rc != 0 and (d / "idx").exists():
            return expected, 1, "failed ingest left the index behind"
        if "Traceback" in err:
            return expected, 1, "traceback"
        return expected, rc, note
    return case


def filter_case(expr: str):
    def case(d: Path):
        (d / "r.jsonl").write_text("".join(json.dumps({"id": i, "vector": [float(i), 1.0], "attributes": {"a": i}}) + "\n" for i in range(5)))
        tp("ingest", "idx", "-i", "r.jsonl", "-q", cwd=d)
        rc, _, err = tp("query", "idx", "--vector", "[1, 1]", "--filter", expr, cwd=d)
        return 4, rc, err.strip()[-160:]
    return case


def npy_header_rows(rows: int):
    def case(d: Path):
        with open(d / "x.npy", "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (rows, 128)})
            f.write(BASE[:4].tobytes())
        rc, _, err = tp("ingest", "idx", "-i", "x.npy", cwd=d, timeout=60)
        note = err.strip()[-160:]
        if (d / "idx").exists():
            return 4, 1, "index created"
        return 4, rc, note
    return case


def delete_big_id(d: Path):
    index(d, rows=300, compact=False)
    rc, _, err = tp("delete", "idx", "--id", str(2**64), cwd=d)
    return 4, rc, err.strip()[-160:]


def auto_ids_overflow(d: Path):
    (d / "r.jsonl").write_text(json.dumps({"id": 2**63 - 2, "vector": BASE[0].tolist()}) + "\n")
    tp("ingest", "idx", "-i", "r.jsonl", "-q", cwd=d)
    rc, _, err = tp("ingest", "idx", "-i", npy(d, "x.npy", BASE[:10]), cwd=d)
    vrc = verify(d)
    return 4, rc if vrc == 0 else 1, err.strip()[-120:] + f" (verify {vrc})"


def zero_columns(d: Path):
    np.save(d / "x.npy", np.zeros((5, 0), np.float32))
    rc, _, err = tp("ingest", "idx", "-i", "x.npy", cwd=d)
    return 4, rc if not (d / "idx").exists() else 1, err.strip()[-160:]


def manifest_param_flip(d: Path):
    idx = index(d, rows=3000)
    tp("build-hnsw", "idx", "-q", cwd=d)
    m = manifest(idx)
    raw = m.read_bytes()
    bad = []
    for i in range(0, len(raw), max(1, len(raw) // 60)):
        b = bytearray(raw)
        b[i] ^= 0x04
        m.write_bytes(bytes(b))
        rc = verify(d)
        if rc != 5:
            bad.append((i, rc))
    m.write_bytes(raw)
    return 5, 5 if not bad else 0, f"undetected flips: {bad[:5]}" if bad else "every sampled flip detected"


def format_version_flip(d: Path):
    idx = index(d, rows=300)
    p = idx / "tidepool.json"
    p.write_bytes(p.read_bytes().replace(b'"format_version": 2', b'"format_version": 3'))
    rc, _, err = tp("count", "idx", cwd=d)
    return 5, rc, err.strip()[-160:]


def missing_sidecar_rebuilt(d: Path):
    idx = index(d, rows=3000)
    tp("build-hnsw", "idx", "-q", cwd=d)
    side = [p for p in (idx / "segments").iterdir() if p.suffix != ".tpvs"]
    for p in side:
        p.unlink()
    rc, _, err = tp("build-hnsw", "idx", "-q", cwd=d)
    return 0, rc if rc else verify(d), err.strip()[-160:]


def hostile_segment_path(target: str):
    def case(d: Path):
        idx = index(d, rows=300)
        outside = d / "outside.tpvs"
        shutil.copy(seg_file(idx), outside)
        path = {"outside": "../outside.tpvs", "passwd": "../../etc/passwd", "abs": str(outside)}[target]
        reseal(manifest(idx), lambda doc: doc["segments"][0]["vectors"].__setitem__("path", path))
        # CURRENT carries the CRC of the manifest name only, so it stays valid
        rc, _, err = tp("count", "idx", cwd=d)
        return 5, rc, err.strip()[-160:]
    return case


def hostile_obsolete(kind: str):
    def case(d: Path):
        idx = index(d, rows=300)
        victim = d / "victim"
        victim.write_text("keep me")
        path = "../victim" if kind == "relative" else str(victim)
        reseal(manifest(idx), lambda doc: doc["obsolete"].append({"path": path, "since_unix": 0.0}))
        rc, _, err = tp("compact", "idx", "--grace", "0", cwd=d)
        if not victim.exists():
            return 5, 1, "victim deleted"
        return 5, rc, err.strip()[-160:]
    return case


def lock_symlink(d: Path):
    idx = index(d, rows=300, compact=False)
    victim = d / "victim"
    victim.write_text("keep me")
    (idx / "LOCK").unlink(missing_ok=True)
    (idx / "LOCK").symlink_to(victim)
    rc, _, err = tp("ingest", "idx", "-i", npy(d, "x.npy", BASE[300:310]), cwd=d)
    intact = victim.read_text() == "keep me"
    return "!=0 or victim intact", rc, ("victim intact; " if intact else "VICTIM OVERWRITTEN; ") + err.strip()[-120:], intact


def disk_full(d: Path):
    mnt = d / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True).returncode:
        return 10, SKIP, "cannot mount a small tmpfs here"
    try:
        rc, _, err = tp("ingest", "idx", "-i", str(d / npy(d, "x.npy", BASE)), cwd=mnt)
        leftovers = [p.name for p in mnt.rglob("*") if "tmp" in p.name]
        return 10, rc if not leftovers else 1, err.strip()[-120:] + (f" leftovers {leftovers}" if leftovers else "")
    finally:
        subprocess.run(["umount", str(mnt)])


def read_only_mount(cmd: str):
    def case(d: Path):
        idx = index(d, rows=2000)
        mnt = d / "ro"
        mnt.mkdir()
        if subprocess.run(["mount", "--bind", "-o", "ro", str(idx), str(mnt)], capture_output=True).returncode:
            return 10, SKIP, "cannot bind-mount read-only here"
        subprocess.run(["mount", "-o", "remount,bind,ro", str(mnt)], capture_output=True)
        try:
            args = {"ingest": ["-i", str(d / "base.npy")], "compact": [],
                    "build-ivf": ["--min-rows", "1"], "build-hnsw": ["--min-rows", "1"]}[cmd]
            if cmd == "compact":
                tp("ingest", "idx", "-i", "base.npy", "-q", cwd=d)
            rc, _, err = tp(cmd, "ro", *args, cwd=d)
            return 10, rc, err.strip()[-160:]
        finally:
            subprocess.run(["umount", str(mnt)])
    return case


def long_attr_string(d: Path):
    (d / "r.jsonl").write_text(json.dumps({"id": 1, "vector": [1.0, 2.0], "attributes": {"s": "x" * 10**7}}) + "\n")
    rc, _, err = tp("ingest", "idx", "-i", "r.jsonl", cwd=d)
    return 4, rc if not (d / "idx").exists() else 1, err.strip()[-160:]


CASES: list[tuple[str, Callable[[Path], tuple]]] = [
    ("ivf: duplicate rows in one list, IVF == exact with ties by id", ivf_ties),
    ("ivf flow: query 10 queries from .npy", ivf_query(10, False)),
    ("ivf flow: query 100 queries from .npy", ivf_query(100, False)),
    ("ivf flow: query 100 queries from stdin", ivf_query(100, True)),
    ("ivf flow: HNSW+IVF index, --nprobe 10", ivf_query(100, False, hnsw=True)),
    ("ivf flow: 4096-d index after build-ivf", ivf_query(10, False, dim=4096)),
    ("first ingest: NaN in .npy -> nothing created", bad_first_ingest("x.npy", np.full((3, 4), np.nan, np.float32))),
    ("first ingest: Inf in JSONL -> nothing created", bad_first_ingest("x.jsonl", b'{"id": 1, "vector": [Infinity, 1]}\n')),
    ("first ingest: 1e400 in JSONL -> nothing created", bad_first_ingest("x.jsonl", b'{"id": 1, "vector": [1e400, 1]}\n')),
    ("first ingest: float64 overflow, no RuntimeWarning", bad_first_ingest("x.npy", np.full((3, 4), 1e300))),
    ("permission denied: ingest", perm_denied("ingest")),
    ("permission denied: compact", perm_denied("compact")),
    ("permission denied: build-ivf", perm_denied("build-ivf")),
    ("unreadable .jsonl input", unreadable("jsonl")),
    ("unreadable .npy input", unreadable("npy")),
    ("usage: unknown --metric", usage("ingest", "new", "-i", "q.npy", "--metric", "hamming")),
    ("usage: --format xml", usage("query", "idx", "-i", "q.npy", "--format", "xml")),
    ("usage: --id-codec zip", usage("build-ivf", "idx", "--id-codec", "zip")),
    ("usage: query without --vector/--input", usage("query", "idx")),
    ("usage: -k 0", usage("query", "idx", "-i", "q.npy", "-k", "0")),
    ("usage: -k 2^62", usage("query", "idx", "-i", "q.npy", "-k", str(2**62))),
    ("usage: build-hnsw --m 10^8", usage("build-hnsw", "idx", "--m", str(10**8))),
    ("closed pipe: stats | head -n 1", closed_pipe("stats", "idx")),
    ("closed pipe: query --format table | head -n 1", closed_pipe("query", "idx", "-i", "q.npy", "--format", "table")),
    ("closed pipe: query --format json | head -c 100", closed_pipe("query", "idx", "-i", "q.npy", "-k", "1000")),
    ("flipped byte in segment vectors: --verify 5 + readable counts", flipped_vectors),
    ("flipped byte in segment vectors: compact refuses", flipped_vectors_compact),
    ("stats shows WAL-only attributes", attrs_before_compaction),
    ("race: build-hnsw paused while compact --grace 0", race_build_hnsw_vs_compact("0")),
    ("race: build-hnsw paused while compact --grace 2", race_build_hnsw_vs_compact("2")),
    ("race: slow stdin ingest while compact --grace 1", race_slow_ingest_vs_compact),
    ("CURRENT removed: recovered with a Warning", remove_current),
    ("WAL file truncated mid-record", truncate_wal),
    ("WAL file truncated at record boundaries", truncate_wal_boundary),
    ("WAL file removed: --verify and query", remove_wal),
    ("CURRENT: every byte flipped once", current_variant("flip")),
    ("CURRENT -> /dev/zero", current_variant("dev-zero")),
    ("CURRENT is a FIFO", current_variant("fifo")),
    ("tidepool.json -> /dev/zero", settings_dev_zero),
    ("WAL name is a directory", wal_dir),
    ("segment symlink loop", segment_loop),
    ("JSONL nested 10^4 deep", jsonl_ingest(b'{"id": 1, "vector": ' + b"[" * 10**4 + b"]" * 10**4 + b"}\n")),
    ("JSONL invalid UTF-8", jsonl_ingest(b'{"id": "\xff\xfe", "vector": [1, 2]}\n')),
    ("JSONL lone surrogate id", jsonl_ingest(b'{"id": "\\ud800", "vector": [1, 2]}\n')),
    ("JSONL lone surrogate attribute name", jsonl_ingest(b'{"id": 1, "vector": [1, 2], "attributes": {"\\udc00": 1}}\n')),
    ("JSONL 10^7-character attribute string", long_attr_string),
    ("filter: 2,000 nested not", filter_case("not " * 2000 + "a = 1")),
    ("filter: 10,000 parentheses", filter_case("(" * 10000 + "a = 1" + ")" * 10000)),
    (".npy header claims 2^31 rows", npy_header_rows(2**31)),
    (".npy header claims 2^40 rows", npy_header_rows(2**40)),
    (".npy with 0 columns", zero_columns),
    ("delete --id 2^64", delete_big_id),
    ("automatic ids past 2^63 - 1", auto_ids_overflow),
    ("manifest: sampled byte flips all detected", manifest_param_flip),
    ("tidepool.json format_version flipped -> damage, not newer", format_version_flip),
    ("missing sidecar rebuilt by plain build-hnsw", missing_sidecar_rebuilt),
    ("manifest names a segment outside the index", hostile_segment_path("outside")),
    ("manifest names ../../etc/passwd", hostile_segment_path("passwd")),
    ("manifest names an absolute segment path", hostile_segment_path("abs")),
    ("obsolete list names ../victim: compact", hostile_obsolete("relative")),
    ("obsolete list names an absolute path: compact", hostile_obsolete("absolute")),
    ("LOCK symlink not followed", lock_symlink),
    ("disk full (2 MiB tmpfs) during ingest", disk_full),
    ("read-only mount: ingest", read_only_mount("ingest")),
    ("read-only mount: compact", read_only_mount("compact")),
    ("read-only mount: build-hnsw", read_only_mount("build-hnsw")),
    ("read-only mount: build-ivf", read_only_mount("build-ivf")),
]


def main() -> None:
    rows = []
    t_all = time.perf_counter()
    for name, fn in CASES:
        if ARGS.only and ARGS.only not in name:
            continue
        d = Path(tempfile.mkdtemp(prefix="tp-replay-"))
        t = time.perf_counter()
        try:
            out = fn(d)
        except Exception as e:  # a replay bug is reported, never hidden
            out = ("?", "error", f"{type(e).__name__}: {e}")
        finally:
            subprocess.run(["chmod", "-R", "u+rwx", str(d)], capture_output=True)
            shutil.rmtree(d, ignore_errors=True)
        expected, got, note = out[:3]
        ok = out[3] if len(out) > 3 else (got == SKIP and SKIP) or (got == expected)
        rows.append({"reproduction": name, "expected": expected, "got": got,
                     "ok": ok, "note": note, "seconds": round(time.perf_counter() - t, 2)})
        r = rows[-1]
        print(f"{name[:62]:<62} {str(expected):>6} {str(got):>6} {str(ok):>5}  {note[:90]}", flush=True)
    bad = [r for r in rows if r["ok"] is False]
    print(f"\n{len(rows)} reproductions, {len(bad)} not as documented, "
          f"{sum(r['ok'] == SKIP for r in rows)} skipped, {time.perf_counter() - t_all:.0f} s "
          f"(OMP_NUM_THREADS={ARGS.threads})")
    out = Path(__file__).resolve().parent / "results" / "fault_replay.json"
    if not ARGS.only:
        out.write_text(json.dumps({"threads": ARGS.threads, "cases": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
