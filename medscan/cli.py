"""``medscan <command> ...``: one console script for every job.

Hydra jobs take ``key=value`` overrides and ``-m``/``--multirun``::

    medscan segment input=/data/ct output=out backend=cpu
    medscan -h

Plain commands (``inspect``, ``view``) take ordinary arguments.
"""

from __future__ import annotations

import importlib
import sys

#: Hydra jobs: command -> module in ``medscan_jobs`` (the repository's ``jobs/``).
HYDRA_JOBS = {
    "segment": "Segment CT series: tissues, lungs, measurements, meshes, previews.",
    "train": "Train the chest X-ray classifier.",
    "evaluate": "Evaluate a classifier checkpoint with clinical metrics.",
    "predict": "Predict PNEUMONIA/NORMAL for images or folders (optional Grad-CAM).",
    "export": "Export a classifier checkpoint to ONNX and TorchScript.",
}

#: Plain commands: command -> (module, help).
PLAIN_COMMANDS = {
    "inspect": ("medscan.dicom.inspect", "List DICOM series and QC findings under a folder."),
    "view": ("medscan.napari.view", "Open a case, batch output or DICOM folder in napari."),
}


def _usage() -> str:
    lines = ["usage: medscan <command> [args]", "", "Hydra jobs (key=value overrides, -m):"]
    lines += [f"  {name:<10} {text}" for name, text in HYDRA_JOBS.items()]
    lines += ["", "Commands:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in PLAIN_COMMANDS.items()]
    lines += ["", "Run `medscan <command> --help` for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``medscan <command> ...`` and return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command in PLAIN_COMMANDS:
        module = importlib.import_module(PLAIN_COMMANDS[command][0])
        return int(module.main(rest) or 0)
    if command in HYDRA_JOBS:
        module = importlib.import_module(f"medscan_jobs.{command}")
        # Hydra reads sys.argv itself; give it the overrides only.
        sys.argv = [f"medscan {command}", *rest]
        try:
            result = module.main()
        except SystemExit as exc:  # hydra exits on --help / --cfg
            return int(exc.code or 0)
        return int(result or 0)
    print(f"medscan: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
