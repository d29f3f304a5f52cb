"""Issue 15: the ``medscan`` process ends without the interpreter's teardown, losing nothing.

Each case runs in a process of its own (what is tested is how a process ends). No timing
asserts: ``benchmarks/end_to_end.py`` measures.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from medscan.cli import _usage
from medscan.process_exit import BROKEN_PIPE_EXIT


def _buffered_env() -> dict[str, str]:
    """This environment with stdout block-buffered, as a user's (no PYTHONUNBUFFERED)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120, env=_buffered_env())


def test_console_script_prints_and_exits_as_main():
    exe = Path(sys.executable).parent / "medscan"
    if not exe.exists():
        exe = shutil.which("medscan")
    if exe is None:
        pytest.skip("no `medscan` console script next to this Python or on PATH")
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stdout) == (0, _usage() + "\n")
    r = subprocess.run([str(exe), "no-such-command"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "unknown command 'no-such-command'" in r.stderr


def test_module_entry_ends_through_end_process():
    r = subprocess.run([sys.executable, "-m", "medscan.cli", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert (r.returncode, r.stdout) == (0, _usage() + "\n")


def test_atexit_handlers_logs_and_buffered_output_survive(tmp_path):
    log = tmp_path / "job.log"
    r = _run(f"""
        import atexit, logging, sys
        from medscan.process_exit import end_process
        logging.basicConfig(filename={str(log)!r}, level=logging.INFO)
        logging.getLogger("medscan").info("case written")
        atexit.register(lambda: print("atexit ran"))
        sys.stdout.write("x" * 5000)  # held in the buffer until the flush
        end_process(3)
        print("not reached")
    """)
    assert r.returncode == 3, r.stderr
    assert r.stdout == "x" * 5000 + "atexit ran\n"
    assert "case written" in log.read_text()


def test_a_running_thread_is_waited_for_as_at_a_normal_exit(tmp_path):
    out = tmp_path / "done.txt"
    r = _run(f"""
        import threading, time
        from medscan.process_exit import end_process
        def work():
            time.sleep(0.5)
            open({str(out)!r}, "w").write("finished")
        threading.Thread(target=work).start()
        end_process(4)
    """)
    assert r.returncode == 4, r.stderr
    assert out.read_text() == "finished"


def test_a_reader_gone_gives_141_without_a_traceback():
    code = textwrap.dedent("""
        import sys, time
        from medscan.process_exit import end_process
        sys.stdout.write("row\\n" * 100)  # buffered: written by the final flush
        time.sleep(1.0)  # the reader closes its end meanwhile
        end_process(0)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_buffered_env())
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == BROKEN_PIPE_EXIT
    assert b"Traceback" not in err and b"Exception ignored" not in err



@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this system")
def test_a_write_error_at_the_final_flush_gives_120_and_the_reason():
    """stdout on a full disk: the exit code and a line on stderr, as a normal exit gives."""
    code = textwrap.dedent("""
        import sys
        from medscan.process_exit import end_process
        sys.stdout.write("table\\n")  # buffered: written by the final flush
        end_process(0)
    """)
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-c", code], stdout=full, stderr=subprocess.PIPE,
                           text=True, timeout=120, env=_buffered_env())
    assert r.returncode == 120
    assert r.stderr.strip() == "medscan: cannot write the output: No space left on device"
