"""Entry point of a contained decoder process: ``python -m medscan.dicom._decode_worker R W``.

``R`` and ``W`` are the inherited pipe file descriptors for requests and replies; see
:mod:`medscan.dicom.contain`.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    import medscan.dicom.pixels  # noqa: F401  (decoders imported once, before the first request)
    from medscan.dicom.contain import serve

    serve(int(sys.argv[1]), int(sys.argv[2]))
