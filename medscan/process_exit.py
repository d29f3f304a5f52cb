"""Ending the ``medscan`` process without the interpreter's teardown (issue 15).

After ``main()`` has returned, a normal interpreter exit spends 0.3-0.6 s on this 2-core
machine clearing the modules of NumPy, SciPy, scikit-image, trimesh, matplotlib, nibabel and
Hydra and freeing every object one by one (measured: ``import medscan.ct.job, trimesh,
matplotlib.pyplot, ...`` then exit takes 1.7-2.9 s against 1.4-2.0 s ending with
``os._exit``; the atexit handlers take < 0.01 s and a full ``gc.collect()`` 0.06 s of that).
The operating system frees the memory of a process that ends anyway, so a command-line tool
may skip that work once everything it must do at exit has been done. Python has no public
switch for it; :func:`end_process` does what a normal exit does that matters and then calls
``os._exit``:

1. Threads: a normal exit first waits for every non-daemon thread. If one is still running
   (work that has not finished), :func:`end_process` does not skip anything: it exits normally.
2. ``atexit`` handlers run as at a normal exit (``logging.shutdown`` flushes and closes log
   files, medscan's contained workers are ended, multiprocessing's finalizers run).
3. ``sys.stdout`` and ``sys.stderr`` are flushed. A reader that has gone (``medscan ... |
   head``) makes the flush fail: the exit code is then 141 as for SIGPIPE, as ``main`` gives;
   any other write error (a full disk under a redirected stdout) gives 120 and the reason on
   stderr, as a normal exit does.

Only the ``medscan`` console script and ``python -m medscan.cli`` end this way; ``main()``
called in a Python process (tests, notebooks) returns its code as before.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn

#: Exit code for a reader of stdout that has gone (128 + SIGPIPE), as :func:`medscan.cli.main`.
BROKEN_PIPE_EXIT = 141
#: Exit code when stdout or stderr could not be flushed at exit: CPython's own (``Py_Exit``
#: after a failed flush of the standard streams).
FLUSH_FAILED_EXIT = 120


def _other_threads_running() -> bool:
    """Whether a non-daemon thread other than this one is alive (a normal exit waits for it)."""
    me = threading.current_thread()
    return any(t is not me and t.is_alive() and not t.daemon for t in threading.enumerate())


def _flush_stdio(code: int) -> int:
    """Flush stdout and stderr; the exit code, changed when output could not be written.

    As a normal exit: a failed flush (a full disk, an I/O error) gives 120 with the reason on
    stderr; a reader of stdout that has gone gives 141 (as :func:`medscan.cli.main`), quietly.
    A stream already closed (``ValueError``) has nothing left to write.
    """
    for stream in (sys.stdout, sys.stderr):
        if stream is None:
            continue
        try:
            stream.flush()
        except BrokenPipeError:
            if code == 0:
                code = BROKEN_PIPE_EXIT if stream is sys.stdout else FLUSH_FAILED_EXIT
        except OSError as exc:
            if code == 0:
                code = FLUSH_FAILED_EXIT
            if stream is sys.stdout:
                _tell_stderr(f"medscan: cannot write the output: {exc.strerror or exc}")
        except ValueError:
            pass
    return code


def _tell_stderr(line: str) -> None:
    """Write ``line`` to stderr's file descriptor, unbuffered; nothing when that fails too."""
    try:
        os.write(2, (line + "\n").encode("utf-8", "replace"))
    except OSError:
        pass


def end_process(code: int) -> NoReturn:
    """End the process with ``code``: the atexit work, flushed output, no interpreter teardown.

    Parameters
    ----------
    code : int
        The exit status (``main()``'s return value).

    Raises
    ------
    SystemExit
        Instead of ending at once when a non-daemon thread is still running or the interpreter
        has no ``atexit._run_exitfuncs`` (not CPython): the normal exit then runs.
    """
    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)  # CPython's own exit step
    if run_exitfuncs is None or _other_threads_running():
        sys.exit(code)
    run_exitfuncs()
    code = _flush_stdio(code)
    os._exit(code)
