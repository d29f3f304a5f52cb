"""Stopping a job cleanly: Ctrl-C and termination signals end it through Python's unwinding.

* SIGTERM (Slurm's ``scancel`` and time limit, ``docker stop``, ``kill``) and SIGHUP (a closed
  terminal or SSH session) become :class:`Terminated` in the main thread while
  :func:`terminate_as_exception` is active (the CLI wraps every command in it). The same
  ``finally`` blocks and ``except BaseException`` paths as for Ctrl-C then run: case leases
  released, temporary case folders removed, contained worker processes (decoders, the parallel
  mesh) killed (``docs/reliability.md``). The default action of these signals ends the process
  at once, and the workers, which run in sessions of their own, went on computing.
* :func:`import_holding_interrupt` imports a module with those signals held until the import is
  done: some libraries guard optional imports with ``except BaseException`` (trimesh's
  ``nsphere`` and ``graph`` modules), which swallowed a Ctrl-C arriving during the import; since
  the heavy libraries are imported lazily (issue 15) that import happens inside the first case.
"""

from __future__ import annotations

import importlib
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

#: Signals turned into :class:`Terminated` (POSIX names; SIGHUP is absent on Windows).
TERMINATING = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP")
                    if hasattr(signal, name))


class Terminated(BaseException):
    """The process was asked to stop by a signal (a ``BaseException``, like KeyboardInterrupt).

    Attributes
    ----------
    signum : int
        The signal number; the conventional exit status is ``128 + signum``.
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"stopped by {signal.Signals(self.signum).name}")


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_terminated(signum: int, _frame: Any) -> None:
    raise Terminated(signum)


@contextmanager
def terminate_as_exception() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`Terminated` in the main thread.

    Outside the main thread (where Python cannot set handlers) it does nothing. The previous
    handlers are restored on exit.
    """
    if not _in_main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise_terminated) for s in TERMINATING}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def import_holding_interrupt(name: str) -> ModuleType:
    """``importlib.import_module(name)`` with SIGINT, SIGTERM and SIGHUP held until it is done.

    A signal that arrives during the import is recorded and, once the module is imported, passed
    to the handler that was in place (Ctrl-C then raises KeyboardInterrupt right after the
    import instead of vanishing inside a library's ``except BaseException``).

    Parameters
    ----------
    name : str
        Module name, e.g. ``"trimesh"``.

    Returns
    -------
    types.ModuleType
        The module (from ``sys.modules`` when already imported: nothing is held then).

    Raises
    ------
    KeyboardInterrupt, Terminated
        Whatever the previous handler raises for a signal held during the import.
    ImportError
        When the module cannot be imported.
    """
    if name in sys.modules or not _in_main_thread():
        return importlib.import_module(name)
    signums = [signal.SIGINT, *TERMINATING]
    previous = {s: signal.getsignal(s) for s in signums}
    if any(h is None for h in previous.values()):  # a handler not set from Python: leave it
        return importlib.import_module(name)
    held: list[int] = []
    for s in signums:
        signal.signal(s, lambda signum, _frame: held.append(signum))
    try:
        module = importlib.import_module(name)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    for signum in held:
        handler = previous[signum]
        if callable(handler):
            handler(signum, None)
        elif handler == signal.SIG_DFL:  # the default action (ends the process): re-send it
            signal.raise_signal(signum)
    return module
