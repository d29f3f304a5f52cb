"""Decode the next case of a batch while the current one is analysed (issue 15).

``medscan segment`` handles its cases one after another: load (decode the DICOM slices), then
analyse and write. Decoding compressed data runs in a contained worker process
(:mod:`medscan.dicom.contain`) while the job's process only waits, so the next case's load can
overlap the current case's compute. :class:`Prefetcher` does that with one background thread:

* bounded: at most ONE volume is loaded ahead; the next load ahead starts only once that one
  was taken (or dropped);
* it only guesses: which case comes next is decided by the same checks the job makes under the
  case lock (:func:`medscan.ct.job._locked_case`: hand-edited labels kept, unchanged inputs and
  config skipped, a case another run holds), made here without the lock. The job still takes
  the lock and makes every check itself; it uses the volume loaded ahead only when it is the
  case it is about to load and the inputs' hash it computed under the lock equals the one
  hashed before the load ahead. Otherwise the volume is dropped and the case loaded as before,
  so the order of cases, rows, statuses and outputs are those of a run without prefetching;
* a load error is kept and re-raised when the job takes that case: the case fails with the
  same status and reason as when loaded in turn, and the batch goes on;
* :meth:`Prefetcher.close` (in the job's ``finally``: Ctrl-C, a job-level error) sets the
  load's cancel event, which kills a contained worker (its shared-memory files are unlinked
  once mapped, or removed by :func:`~medscan.dicom.contain.run_contained`) and joins the
  thread, so nothing is left behind.

Threads, not processes: the decode already runs in the worker process (compressed data) or in
NumPy and file reads that release the GIL (uncompressed data), so the thread mostly waits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("medscan.segment")

#: ``will_process(series)``: the inputs' hash of a case the job would (re)make, else None.
WillProcess = Callable[[Any], "str | None"]
#: ``load(series, cancel)``: the series' volume (raises what :func:`medscan.dicom.load` raises).
Load = Callable[[Any, threading.Event], Any]


@dataclass
class _Slot:
    """One load ahead: the thread, what it chose and what it got."""

    cancel: threading.Event = field(default_factory=threading.Event)
    decided: threading.Event = field(default_factory=threading.Event)
    case_id: str | None = None  # the case being loaded (None: scanning, or no case to load)
    input_hash: str = ""
    volume: Any = None
    error: BaseException | None = None
    seconds: float = 0.0
    thread: threading.Thread | None = None


class Prefetcher:
    """Loads the next case that the job will process in a background thread (one at a time).

    Parameters
    ----------
    order : sequence of SeriesInfo or LostSeries
        The cases in the order the job handles them (``case_id`` attribute).
    will_process : callable
        ``will_process(series) -> str | None``: the SHA-256 over the series' inputs when the
        job would load this case, None when it would skip it (or cannot tell). Runs in the
        background thread; an exception counts as None.
    load : callable
        ``load(series, cancel) -> Volume``; runs in the background thread and must give up
        soon after ``cancel`` is set.
    enabled : bool
        False: every method is a no-op (the job loads each case in turn).
    """

    def __init__(self, order: Sequence[Any], will_process: WillProcess, load: Load,
                 enabled: bool = True) -> None:
        self.enabled = enabled
        self._order = list(order)
        self._pos = {s.case_id: i for i, s in enumerate(self._order)}
        self._will_process = will_process
        self._load = load
        self._slot: _Slot | None = None

    def start_after(self, case_id: str) -> None:
        """Start loading the first case after ``case_id`` that the job will process.

        Nothing happens when prefetching is off, a load ahead is already held (the bound of
        one volume), or ``case_id`` is not in the order.
        """
        if not self.enabled or self._slot is not None or case_id not in self._pos:
            return
        slot = _Slot()
        candidates = self._order[self._pos[case_id] + 1:]
        slot.thread = threading.Thread(target=self._run, args=(slot, candidates),
                                       name=f"medscan-prefetch-after-{case_id}", daemon=True)
        self._slot = slot
        slot.thread.start()

    def _run(self, slot: _Slot, candidates: list[Any]) -> None:
        chosen, input_hash = None, ""
        for series in candidates:
            if slot.cancel.is_set():
                break
            try:
                input_hash = self._will_process(series) or ""
            except Exception:  # a guess only: the job makes the real checks under the lock
                input_hash = ""
            if input_hash:
                chosen = series
                break
        if slot.cancel.is_set():
            chosen = None
        slot.case_id = None if chosen is None else chosen.case_id
        slot.input_hash = input_hash if chosen is not None else ""
        slot.decided.set()
        if chosen is None:
            return
        t0 = time.perf_counter()
        try:
            slot.volume = self._load(chosen, slot.cancel)
        except BaseException as exc:  # kept and re-raised for that case by take()
            slot.error = exc
        slot.seconds = round(time.perf_counter() - t0, 4)

    def take(self, series: Any, input_hash: str) -> tuple[Any, float] | None:
        """The volume loaded ahead for ``series``, if it is valid for ``input_hash``.

        Waits for the thread's choice when it is still checking cases (it goes through the
        same cases as the job, so it is at or before ``series``: at most the hashing of cases
        the job has just passed) and for the load when it is still running. A load ahead of
        an earlier case, of no case, or of unchanged-looking inputs whose hash differs from
        ``input_hash`` (the files changed, or could not be hashed) is dropped; one of a later
        case is kept.

        Parameters
        ----------
        series : SeriesInfo
            The case the job is about to load (under its lock).
        input_hash : str
            The SHA-256 over its inputs the job computed under the lock ("" when unreadable).

        Returns
        -------
        (Volume, float) or None
            The volume and the load's seconds (spent in the background), or None: load it now.

        Raises
        ------
        Exception
            What the load ahead of this case raised (e.g. :class:`medscan.dicom.SeriesError`).
        """
        slot = self._slot
        if slot is None:
            return None
        slot.decided.wait()
        if slot.case_id != series.case_id:
            if not self._later(slot, series.case_id):
                self._drop()
            return None
        self._join(slot)
        self._slot = None
        if not input_hash or slot.input_hash != input_hash:
            log.info("case %s: inputs changed since they were decoded ahead; loading again",
                     series.case_id)
            return None
        if slot.error is not None:
            error, slot.error = slot.error, None
            raise error
        volume, slot.volume = slot.volume, None
        return volume, slot.seconds

    def _later(self, slot: _Slot, case_id: str) -> bool:
        """True when ``slot`` loads a case that comes after ``case_id`` (keep it)."""
        return (slot.decided.is_set() and slot.case_id is not None and case_id in self._pos
                and self._pos[slot.case_id] > self._pos[case_id])

    def finished(self, case_id: str) -> None:
        """The job is done with ``case_id``: drop a load ahead of it or of an earlier case."""
        slot = self._slot
        if slot is not None and slot.decided.is_set() and not self._later(slot, case_id):
            self._drop()

    def close(self) -> None:
        """Cancel and join a load ahead (its worker killed), drop its volume; prefetching ends.

        Safe to call more than once; called in the job's ``finally``.
        """
        self.enabled = False
        self._drop()

    def _drop(self) -> None:
        slot, self._slot = self._slot, None
        if slot is None:
            return
        slot.cancel.set()
        self._join(slot)
        slot.volume = slot.error = None

    @staticmethod
    def _join(slot: _Slot) -> None:
        if slot.thread is not None:
            slot.thread.join()
