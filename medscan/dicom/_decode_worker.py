"""Entry point of a contained decoder process: ``python -m medscan.dicom._decode_worker R W``.

``R`` and ``W`` are the inherited pipe file descriptors for requests and replies; see
:mod:`medscan.dicom.contain`.
"""

from __future__ import annotations

import os
import sys
import threading
import time

#: Seconds between two checks that the parent process is still there.
PARENT_POLL_S = 0.5


def _exit_with_parent(parent: int) -> None:
    """End this worker when its parent has gone (it is then re-parented: another ``getppid``).

    A worker runs in a session of its own (Ctrl-C in a terminal goes to the job, which ends
    it); a parent killed with SIGKILL cannot end it, and the closed request pipe is only seen
    after the current request. Checked from a daemon thread: a decoder or mesh routine holding
    the GIL delays the exit by its own duration at most.
    """
    while True:
        time.sleep(PARENT_POLL_S)
        if os.getppid() != parent:
            os._exit(1)


if __name__ == "__main__":
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True,
                     name="medscan-parent-watch").start()
    import medscan.dicom.pixels  # noqa: F401  (decoders imported once, before the first request)
    from medscan.dicom.contain import serve

    serve(int(sys.argv[1]), int(sys.argv[2]))
