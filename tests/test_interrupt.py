"""Stopping a job: Ctrl-C and termination signals end it cleanly (issue 15 tester round).

The parallel paths of issue 15 (a mesh and decodes in contained worker processes, the next case
decoded ahead) and its lazy imports made three things go wrong: a Ctrl-C during the first case's
``import trimesh`` was swallowed by trimesh's ``except BaseException`` and the batch ran on;
SIGTERM/SIGHUP ended the job but left its worker processes computing; and a Ctrl-C printed a
traceback. Real signals, real processes.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from medscan.interrupt import Terminated, import_holding_interrupt, terminate_as_exception

MEDSCAN = [sys.executable, "-m", "medscan.cli"]
WORKER = "medscan.dicom._decode_worker"

# what trimesh/nsphere.py does around an optional import
SWALLOWING = textwrap.dedent("""
    import os, signal, time
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)  # the handler runs here
    except BaseException:
        pass
    IMPORTED = True
""")


def test_ctrl_c_during_a_swallowing_import_is_not_lost(tmp_path, monkeypatch):
    for name in ("swallow_plain", "swallow_held"):
        (tmp_path / f"{name}.py").write_text(SWALLOWING)
    monkeypatch.syspath_prepend(str(tmp_path))
    # the library pattern on its own: the Ctrl-C vanishes
    assert importlib.import_module("swallow_plain").IMPORTED
    # held during the import, delivered right after it
    with pytest.raises(KeyboardInterrupt):
        import_holding_interrupt("swallow_held")
    assert sys.modules["swallow_held"].IMPORTED
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigterm_becomes_an_exception_only_inside_the_block():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated) as info, terminate_as_exception():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert info.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before


def _children(pid: int) -> list[int]:
    """Pids of live worker processes whose parent is ``pid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if (int(fields.get("PPid", "0")) == pid and WORKER in cmdline
                and not fields.get("State", "").strip().startswith("Z")):
            out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in state


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_segment_job_and_its_workers(sample_ct, tmp_path, signum, code):
    """The signal arrives while the job's mesh worker is up (the first case, trimesh being
    imported or the mesh being computed): the job exits at once with 128 + signum and one
    line, its workers are gone, no temporary case folder is left, and a rerun completes."""
    out = tmp_path / "out"
    cmd = [*MEDSCAN, "segment", f"input={sample_ct}", f"output={out}", "progress=false"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        workers: list[int] = []
        while not workers and proc.poll() is None and time.monotonic() < deadline:
            workers = _children(proc.pid)
            time.sleep(0.05)
        assert workers, "no worker process started"
        time.sleep(0.3)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err[-2000:]
    assert not list(out.glob("*/manifest.json"))  # stopped inside the case, not after it
    assert "Traceback" not in err and "stopped by SIG" in err, err[-2000:]
    assert _wait_gone(workers, 10) == []
    assert not [p.name for p in out.rglob("*") if p.name.startswith((".tmp-", ".old-"))]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]


def test_worker_ends_when_its_parent_is_killed(tmp_path):
    """SIGKILL of the job (no handler can run) still ends its contained worker process."""
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent("""
        from medscan.dicom.contain import probe, run_contained
        run_contained(probe, (1,), "u1", ["x"], 120.0)  # the worker sleeps 120 s
    """))
    proc = subprocess.Popen([sys.executable, str(driver)])
    try:
        deadline = time.monotonic() + 60
        workers: list[int] = []
        while not workers and time.monotonic() < deadline:
            workers = _children(proc.pid)
            time.sleep(0.05)
        assert workers, "no worker process started"
        time.sleep(3)  # the worker has its imports done and sleeps in the request (not in recv)
        proc.kill()
        proc.wait()
        assert _wait_gone(workers, 10) == []
    finally:
        if proc.poll() is None:
            proc.kill()
