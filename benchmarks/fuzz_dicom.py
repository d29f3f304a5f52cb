"""Mutation fuzzer for medscan's DICOM loader (issue 19), on real slices.

Each input is a 3-slice series copied from a real seed series with one or two files damaged
(seeded, reproducible: input ``i`` of seed ``s`` is always the same bytes):

* ``bytes``: AFL-like byte mutations (bit flips, random bytes, "interesting" 0/-1/huge values,
  cuts, spliced or repeated chunks), mostly in the header and the first bytes of the pixel data
  (where a JPEG codestream keeps its tables), sometimes anywhere;
* ``header``: one geometry / pixel-module / rescale value set to a hostile value (NaN, inf, 0,
  negative, huge, wrong type) with pydicom.

The public loader API (``discover`` then ``load`` of every series, uniform or acquired stack) runs
on each input. Outcomes: ``loaded`` (a finite volume with a non-singular finite affine),
``refused`` (:class:`medscan.dicom.SeriesError`, classed by reason), ``no-series`` (every file
skipped with a reason), and the bugs: ``escaped`` (any other exception), ``non-finite``
(a returned volume with a NaN/inf voxel or affine, or a singular affine), ``hang`` (an input over
``--hang-s`` seconds) and ``death`` (the fuzzing process died: the batch would have died).

    .venv/bin/python benchmarks/fuzz_dicom.py --n 100000 --jobs 2 --out fuzz.json
    .venv/bin/python benchmarks/fuzz_dicom.py --decoders --n 5000   # JPEG Lossless decoders
    MEDSCAN_JPEG_LOSSLESS_DECODER=liblj92 .venv/bin/python benchmarks/fuzz_dicom.py --only ricord \
        --n 2000   # containment under a decoder that crashes

``--decoders`` compares the JPEG Lossless decoders on mutated RICORD codestreams, each decode in
a forked child: ok (same pixels as the intact slice / different), refused, crashed (signal).
Bug inputs are saved under ``--save`` for regression tests.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDSCAN_SHARED_DATA", REPO.parent / "shared" / "data"))
SAMPLE = REPO / "medscan" / "sample" / "ct-lungdx-a0002-b40f"
#: (name, folder, first slice): 3 consecutive slices of each are the seed series.
SEEDS = [
    ("sample-explicit-le", SAMPLE, 10),
    ("ricord-jpeg-lossless", DATA / "ct" / "ricord-1a-000082-jpegll", 100),
    ("lungdx-implicit-le", DATA / "ct" / "lungdx-a0001-chest-5mm", 30),
]
PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"
#: A few refusal messages per class (in the summary, to read what the loader says).
EXAMPLES: dict[str, list[str]] = {}
BUGS = ("escaped", "non-finite", "hang", "death")

#: Header values a hostile or broken file may carry (keyword -> candidates).
HOSTILE: dict[str, list[Any]] = {
    "RescaleSlope": ["nan", "inf", "-inf", "0", "-1", "1e30", "1e-30", "abc", ""],
    "RescaleIntercept": ["nan", "inf", "-1e30", "1e300", "x", ""],
    "PixelSpacing": [["0", "0"], ["nan", "1"], ["-1", "1"], ["1e30", "1"], ["1e-30", "1e-30"],
                     ["1"], ["a", "b"]],
    "ImageOrientationPatient": [["0"] * 6, ["1", "0", "0", "1", "0", "0"], ["nan"] * 6,
                                ["1e300", "0", "0", "0", "1", "0"], ["1", "0", "0"]],
    "ImagePositionPatient": [["0", "0", "1e9"], ["nan", "0", "0"], ["0", "0", "20000"],
                             ["inf", "0", "0"], ["1", "2"]],
    "SliceThickness": ["0", "nan", "-5", "1e30"],
    "Rows": [0, 1, 65535, 511, 1024],
    "Columns": [0, 1, 65535, 513],
    "BitsAllocated": [0, 1, 8, 12, 32, 64],
    "BitsStored": [0, 1, 17, 32, 255],
    "HighBit": [0, 31, 255],
    "PixelRepresentation": [0, 1, 2],
    "SamplesPerPixel": [0, 3, 4],
    "NumberOfFrames": ["0", "2", "-1", "1000000"],
    "PixelPaddingValue": [-32768, 65535, 0],
    "PhotometricInterpretation": ["RGB", "PALETTE COLOR", ""],
}


def seed_series(only: str | None = None) -> list[tuple[str, list[bytes]]]:
    """The seed series that exist here (the sample always; the shared ones when present).

    ``only``: keep the seeds whose name contains it (e.g. ``"ricord"``).
    """
    out = []
    for name, folder, start in SEEDS:
        if only and only not in name:
            continue
        files = sorted(Path(folder).glob("*.dcm"))[start:start + 3]
        if len(files) == 3:
            out.append((name, [f.read_bytes() for f in files]))
    return out


def _hot_range(data: bytes) -> tuple[int, int]:
    """Header plus the first 700 bytes of pixel data (JPEG tables live there)."""
    at = data.rfind(PIXEL_DATA_TAG, 132)
    end = (at if at > 0 else min(len(data), 2048)) + 700
    return 132, min(end, len(data))


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """One AFL-like mutation, at a position in the hot range (80%) or anywhere (20%)."""
    buf = bytearray(data)
    lo, hi = _hot_range(data) if rng.random() < 0.8 else (132, len(buf))
    pos = rng.randrange(lo, max(lo + 1, hi))
    kind = rng.choice(["bits", "bytes", "interesting", "cut", "splice", "repeat", "delete"])
    if kind == "bits":
        for _ in range(rng.randint(1, 4)):
            p = min(len(buf) - 1, pos + rng.randrange(16))
            buf[p] ^= 1 << rng.randrange(8)
    elif kind == "bytes":
        for _ in range(rng.randint(1, 4)):
            buf[min(len(buf) - 1, pos + rng.randrange(16))] = rng.randrange(256)
    elif kind == "interesting":  # lengths and counts: 0, -1, huge, off by one
        value = rng.choice([b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\xff\xff\xff\x7f",
                            b"\x00\x00\x01\x00", b"\x01\x00", b"\xfe\xff", b"\xff\xd9"])
        buf[pos:pos + len(value)] = value
    elif kind == "cut":
        buf = buf[:pos]
    elif kind == "splice":
        src = rng.randrange(132, len(buf))
        n = rng.randint(1, 64)
        buf[pos:pos + n] = buf[src:src + n]
    elif kind == "repeat":
        n = rng.randint(1, 256)
        buf[pos:pos] = buf[pos:pos + n] * rng.randint(1, 4)
    else:
        del buf[pos:pos + rng.randint(1, 32)]
    return bytes(buf)


def mutate_header(data: bytes, rng: random.Random) -> bytes:
    """Set one hostile header value with pydicom (written without validation)."""
    import io

    import pydicom
    from pydicom import config

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception:  # an earlier mutation broke the file: mutate its bytes instead
        return mutate_bytes(data, rng)
    keyword = rng.choice(sorted(HOSTILE))
    value = rng.choice(HOSTILE[keyword])
    old = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        try:
            setattr(ds, keyword, value)
            out = io.BytesIO()
            ds.save_as(out)
        except Exception:  # pydicom refuses to encode it: keep the bytes mutation instead
            return mutate_bytes(data, rng)
    finally:
        config.settings.writing_validation_mode = old
    return out.getvalue()


def make_input(
    seeds: list[tuple[str, list[bytes]]], index: int, seed: int
) -> tuple[str, list[bytes]]:
    """Input ``index`` of run ``seed``: (seed name + mutation kinds, the 3 files' bytes)."""
    rng = random.Random(f"{seed}:{index}")
    name, files = seeds[index % len(seeds)]
    files = list(files)
    kinds = []
    for _ in range(rng.choice([1, 1, 1, 2])):
        k = rng.randrange(3)
        if rng.random() < 0.3:
            files[k] = mutate_header(files[k], rng)
            kinds.append("header")
        else:
            for _ in range(rng.choice([1, 1, 2, 3])):
                files[k] = mutate_bytes(files[k], rng)
            kinds.append("bytes")
    return f"{name}/{'+'.join(kinds)}", files


class _Hang(Exception):
    pass


def _on_alarm(signum: int, frame: Any) -> None:
    raise _Hang


def classify_refusal(message: str) -> str:
    """A short class of a SeriesError message (finding code, decoder crash, decode error)."""
    for code in ("position_outlier", "implausible_position", "implausible_extent", "bad_rescale",
                 "bad_pixel_spacing", "bad_orientation", "bad_image_size", "bad_pixel_module",
                 "degenerate_affine", "no_geometry", "unsupported_layout", "mixed_patients",
                 "unsupported_transfer_syntax", "allocation cap"):
        if code in message:
            return code
    for key in ("decoder crashed", "decoder timed out", "failed to decode", "cannot resample",
                "non-finite HU", "non-finite affine", "singular", "overflows"):
        if key in message:
            return key
    return "other"


def check_input(folder: Path, uniform: bool) -> list[str]:
    """Run the public loader API on ``folder``; one outcome per series (or ``no-series``)."""
    from medscan.dicom import SeriesError, discover, load
    from medscan.dicom.validate import affine_problem

    found = discover(folder)
    if not found.series:
        return ["no-series"]
    outcomes = []
    for series in found.series:
        try:
            vol = load(series, uniform=uniform)
        except SeriesError as exc:
            why = classify_refusal(str(exc))
            EXAMPLES.setdefault(why, [])
            if len(EXAMPLES[why]) < 3:
                EXAMPLES[why].append(str(exc)[:400])
            outcomes.append(f"refused:{why}")
            continue
        finite = bool(np.all(np.isfinite(vol.hu))) if vol.hu.dtype.kind == "f" else True
        if not finite or affine_problem(vol.affine) is not None:
            outcomes.append("non-finite")
        else:
            outcomes.append("loaded")
    return outcomes


def run(n: int, seed: int, start: int, hang_s: float, save: Path | None,
        progress_file: Path | None, only: str | None = None) -> dict[str, Any]:
    """Fuzz inputs ``start .. start + n - 1`` in this process; a summary dict."""
    import logging
    import warnings

    from medscan.dicom import contain

    warnings.simplefilter("ignore")  # pydicom warns about every hostile value it reads
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    contain.TIMEOUT_BASE_S = min(contain.TIMEOUT_BASE_S, hang_s / 2)
    contain.TIMEOUT_PER_SLICE_S = min(contain.TIMEOUT_PER_SLICE_S, 1.0)
    seeds = seed_series(only)
    signal.signal(signal.SIGALRM, _on_alarm)
    outcomes: Counter[str] = Counter()
    by_kind: dict[str, Counter[str]] = {}
    bugs: list[dict[str, Any]] = []
    slowest = 0.0
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medscan-fuzz-") as tmp:
        folder = Path(tmp) / "in"
        for i in range(start, start + n):
            label, files = make_input(seeds, i, seed)
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            for k, data in enumerate(files):
                (folder / f"{k}.dcm").write_bytes(data)
            if progress_file is not None:  # so a dead process names its last input
                progress_file.write_text(f"{seed} {i} {label}\n")
            t0 = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, hang_s)
            try:
                results = check_input(folder, uniform=bool(i % 2))
            except _Hang:
                results = ["hang"]
            except Exception as exc:
                results = [f"escaped:{type(exc).__name__}"]
                detail = traceback.format_exc(limit=6)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            slowest = max(slowest, time.perf_counter() - t0)
            kind = label.split("/", 1)[1]
            for r in results:
                outcomes[r] += 1
                by_kind.setdefault(kind, Counter())[r.split(":")[0]] += 1
                if r.split(":")[0] in BUGS:
                    bug = {"seed": seed, "index": i, "label": label, "outcome": r}
                    if r.startswith("escaped"):
                        bug["traceback"] = detail
                    bugs.append(bug)
                    if save is not None:
                        dst = save / f"{seed}-{i}"
                        shutil.copytree(folder, dst, dirs_exist_ok=True)
    return {
        "inputs": n, "seed": seed, "start": start, "seconds": time.perf_counter() - t_start,
        "slowest_input_s": slowest, "outcomes": dict(outcomes),
        "by_mutation": {k: dict(v) for k, v in by_kind.items()}, "bugs": bugs,
        "seeds": [name for name, _ in seeds], "examples": EXAMPLES,
    }


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum the summaries of several worker processes."""
    total: dict[str, Any] = {"inputs": 0, "outcomes": Counter(), "by_mutation": {}, "bugs": [],
                             "slowest_input_s": 0.0, "deaths": []}
    for p in parts:
        total["inputs"] += p["inputs"]
        total["outcomes"].update(p["outcomes"])
        for k, v in p["by_mutation"].items():
            total["by_mutation"].setdefault(k, Counter()).update(v)
        total["bugs"] += p["bugs"]
        total["slowest_input_s"] = max(total["slowest_input_s"], p["slowest_input_s"])
        total["deaths"] += p.get("deaths", [])
        total["seeds"] = p.get("seeds", [])
        for k, v in p.get("examples", {}).items():
            total.setdefault("examples", {}).setdefault(k, [])
            total["examples"][k] = (total["examples"][k] + v)[:3]
    total["outcomes"] = dict(sorted(total["outcomes"].items()))
    total["by_mutation"] = {k: dict(v) for k, v in sorted(total["by_mutation"].items())}
    return total


def run_workers(n: int, seed: int, jobs: int, hang_s: float, save: Path | None,
                chunk: int, only: str | None = None) -> dict[str, Any]:
    """Fuzz ``n`` inputs in ``jobs`` child processes, chunk by chunk; a dead child is a death."""
    parts: list[dict[str, Any]] = []
    pending = list(range(0, n, chunk))
    running: list[tuple[subprocess.Popen, int, Path, Path]] = []
    tmp = Path(tempfile.mkdtemp(prefix="medscan-fuzz-run-"))
    try:
        while pending or running:
            while pending and len(running) < jobs:
                start = pending.pop(0)
                out, prog = tmp / f"{start}.json", tmp / f"{start}.progress"
                cmd = [sys.executable, __file__, "--worker", "--n", str(min(chunk, n - start)),
                       "--seed", str(seed), "--start", str(start), "--hang-s", str(hang_s),
                       "--out", str(out), "--progress-file", str(prog)]
                if save is not None:
                    cmd += ["--save", str(save)]
                if only:
                    cmd += ["--only", only]
                running.append((subprocess.Popen(cmd), start, out, prog))
            time.sleep(0.2)
            for item in list(running):
                proc, start, out, prog = item
                if proc.poll() is None:
                    continue
                running.remove(item)
                if proc.returncode == 0 and out.is_file():
                    parts.append(json.loads(out.read_text()))
                else:  # the fuzzing process died: that input would have killed a batch
                    last = prog.read_text().strip() if prog.is_file() else "?"
                    parts.append({"inputs": 0, "outcomes": {"death": 1}, "by_mutation": {},
                                  "bugs": [{"outcome": "death", "last_input": last,
                                            "returncode": proc.returncode}],
                                  "slowest_input_s": 0.0,
                                  "deaths": [{"chunk": start, "last_input": last,
                                              "returncode": proc.returncode}]})
                print(f"chunk {start}: rc {proc.returncode}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return merge(parts)


# --- decoder comparison ------------------------------------------------------------------------

def _decoders() -> dict[str, Any]:
    import imagecodecs
    from libjpeg import decode as libjpeg_decode

    return {
        "libjpeg-turbo (imagecodecs.jpeg8_decode)": imagecodecs.jpeg8_decode,
        "pylibjpeg-libjpeg": libjpeg_decode,
        "liblj92 (imagecodecs.ljpeg_decode)": imagecodecs.ljpeg_decode,
    }


def _forked(fn: Any, frame: bytes, reference: np.ndarray, hang_s: float) -> str:
    """Decode in a forked child: ok-same / ok-different / refused / crashed / hang."""
    pid = os.fork()
    if pid == 0:  # child: no Python cleanup, just an exit status
        signal.alarm(int(max(1, hang_s)))
        try:
            arr = np.asarray(fn(frame))
            same = arr.shape == reference.shape and np.array_equal(arr, reference)
            os._exit(0 if same else 1)
        except BaseException:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return "hang" if sig == signal.SIGALRM else f"crashed ({signal.Signals(sig).name})"
    return {0: "ok, intact pixels", 1: "ok, different pixels", 3: "refused"}.get(
        os.WEXITSTATUS(status), "other")


def compare_decoders(n: int, seed: int, hang_s: float) -> dict[str, Any]:
    """Each decoder on ``n`` mutated RICORD JPEG Lossless codestreams (same inputs for all)."""
    import pydicom
    from pydicom.encaps import generate_frames

    folder = DATA / "ct" / "ricord-1a-000082-jpegll"
    files = sorted(folder.glob("*.dcm"))[100:110]
    frames = []
    for f in files:
        ds = pydicom.dcmread(f)
        frames.append((next(generate_frames(ds.PixelData, number_of_frames=1)), ds.pixel_array))
    decoders = _decoders()
    table = {name: Counter() for name in decoders}
    crashes: dict[str, list[int]] = {name: [] for name in decoders}
    joint: Counter[str] = Counter()  # per input: which decoders accepted it
    t0 = time.perf_counter()
    for i in range(n):
        rng = random.Random(f"dec:{seed}:{i}")
        frame, ref = frames[i % len(frames)]
        buf = bytearray(frame)
        for _ in range(rng.choice([1, 1, 2, 3])):  # mostly the tables and the first scan bytes
            pos = rng.randrange(0, 700) if rng.random() < 0.8 else rng.randrange(len(buf))
            buf[pos] ^= 1 << rng.randrange(8) if rng.random() < 0.5 else rng.randrange(1, 256)
        data = bytes(buf)
        accepted = []
        for name, fn in decoders.items():
            outcome = _forked(fn, data, ref.view(np.uint16), hang_s)
            table[name][outcome] += 1
            if outcome.startswith("ok"):
                accepted.append(name.split(" ")[0])
            if not outcome.startswith(("ok", "refused")) and len(crashes[name]) < 20:
                crashes[name].append(i)
        joint["accepted by " + (" + ".join(accepted) or "none")] += 1
    return {"inputs": n, "seed": seed, "seconds": time.perf_counter() - t0,
            "table": {k: dict(v) for k, v in table.items()}, "joint": dict(sorted(joint.items())),
            "crash_or_hang_examples": crashes}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000, help="inputs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", type=int, default=0, help="first input index")
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.add_argument("--chunk", type=int, default=2000, help="inputs per worker process")
    p.add_argument("--hang-s", type=float, default=10.0, help="an input over this is a hang")
    p.add_argument("--out", type=Path, help="write the summary JSON here")
    p.add_argument("--save", type=Path, help="copy bug inputs here")
    p.add_argument("--only", help="use only the seed series whose name contains this")
    p.add_argument("--decoders", action="store_true", help="compare JPEG Lossless decoders")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--progress-file", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.decoders:
        summary = compare_decoders(a.n, a.seed, a.hang_s)
    elif a.worker:
        summary = run(a.n, a.seed, a.start, a.hang_s, a.save, a.progress_file, a.only)
    else:
        t0 = time.perf_counter()
        summary = run_workers(a.n, a.seed, a.jobs, a.hang_s, a.save, a.chunk, a.only)
        summary["seconds"] = round(time.perf_counter() - t0, 1)
        summary["inputs_per_s"] = round(summary["inputs"] / summary["seconds"], 1)
    text = json.dumps(summary, indent=1, default=str)
    if a.out:
        a.out.write_text(text)
    if not a.worker:
        print(text)
    bugs = [b for b in summary.get("bugs", [])]
    return 1 if bugs else 0


if __name__ == "__main__":
    sys.exit(main())
