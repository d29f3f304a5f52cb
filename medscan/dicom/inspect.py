"""``medscan inspect PATH [--json]``: list the DICOM series under a folder and their QC findings.

Reads headers only. Prints a table (rich) by default; ``--json`` prints
``{"root", "series": [...], "other_series": [...], "skipped": [...]}``, each series with
``case_id, patient_id, modality, n_slices, shape, spacing, transfer_syntax, findings`` (no
patient name or PatientID: ids are keyed hashes, see medscan.dicom.identity).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from medscan.dicom.discover import Discovery, discover
from medscan.dicom.series import SeriesInfo


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="medscan inspect",
        description="List DICOM series, skipped files and QC findings under PATH (headers only).",
    )
    p.add_argument("path", help="folder (walked recursively) or a single DICOM file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--modality",
        action="append",
        default=None,
        help="modality loaded as image series (repeatable; default CT)",
    )
    p.add_argument("--salt", default=None, help="secret key of the pseudonymous ids (default: "
                   "$MEDSCAN_ID_SECRET, else the per-installation secret file)")
    p.add_argument("--files", action="store_true", help="JSON: include each series' file list")
    p.add_argument("--free-text", action="store_true",
                   help="JSON: keep free-text DICOM fields (SeriesDescription, ...; may hold "
                        "names)")
    return p


#: Short transfer syntax labels for the table (the JSON has the full names).
SHORT_SYNTAX = {
    "1.2.840.10008.1.2": "implicit LE",
    "1.2.840.10008.1.2.1": "explicit LE",
    "1.2.840.10008.1.2.2": "explicit BE",
    "1.2.840.10008.1.2.4.50": "JPEG baseline",
    "1.2.840.10008.1.2.4.51": "JPEG extended",
    "1.2.840.10008.1.2.4.57": "JPEG lossless",
    "1.2.840.10008.1.2.4.70": "JPEG lossless SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS near-lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.5": "RLE",
}


def _series_row(s: SeriesInfo) -> list[str]:
    sz, sy, sx = s.spacing
    codes = ", ".join(f"{f.code}" for f in s.findings) or "-"
    return [
        s.case_id,
        s.patient_id,
        s.modality,
        str(s.n_slices),
        "x".join(str(v) for v in s.shape),
        f"{sz:.3g} x {sy:.3g} x {sx:.3g}",
        SHORT_SYNTAX.get(s.transfer_syntax, s.transfer_syntax_name),
        codes,
    ]


def _print_table(found: Discovery) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"DICOM series under {found.root}")
    for col in ("case", "patient"):
        table.add_column(col, no_wrap=True, min_width=13)
    for col in ("mod", "slices", "shape z,y,x", "spacing mm", "syntax", "QC"):
        table.add_column(col)
    for s in found.series:
        table.add_row(*_series_row(s))
    console.print(table)
    for s in found.series:
        for f in s.findings:
            colour = {"error": "red", "warning": "yellow"}.get(f.severity, "cyan")
            console.print(f"[{colour}]{s.case_id} {f.severity} {f.code}[/]: {f.message}")
    if found.other_series:
        other = Table(title="Other series (not loaded)")
        for col in ("case", "patient", "mod", "files", "QC"):
            other.add_column(col)
        for s in found.other_series:
            codes = ", ".join(f.code for f in s.findings) or "-"
            other.add_row(s.case_id, s.patient_id, s.modality, str(s.n_slices), codes)
        console.print(other)
    if found.skipped:
        skipped = Table(title=f"Skipped files ({len(found.skipped)})")
        skipped.add_column("path")
        skipped.add_column("reason")
        for k in found.skipped:
            skipped.add_row(str(k.path), k.reason)
        console.print(skipped)


def _printable(value: Any) -> Any:
    """Copy of a JSON-able structure whose strings hold no lone surrogates (see printable_path)."""
    if isinstance(value, str):
        try:
            raw = value.encode("utf-8", "surrogateescape")  # file names: the original bytes
        except UnicodeEncodeError:
            raw = value.encode("utf-8", "backslashreplace")  # any other lone surrogate
        return raw.decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_printable(v) for v in value]
    return value


def _private(data: dict[str, Any], root: Any, free_text: bool) -> dict[str, Any]:
    """``--json`` data with file paths relative to the input root, free text dropped.

    Folders above the root (an archive's PatientID folder) never appear; free-text fields
    stay out unless ``--free-text`` (see :mod:`medscan.io.redact`).
    """
    from medscan.io.redact import relative_to_root, series_metadata

    def rel(path: Any) -> str:
        return relative_to_root(path, root)

    for s in data["series"] + data["other_series"]:
        s["metadata"] = series_metadata(s.get("metadata", {}), free_text)
        if "files" in s:
            s["files"] = [rel(f) for f in s["files"]]
        for f in s.get("findings", []):
            f["files"] = [rel(x) for x in f.get("files", [])]
    for k in data["skipped"]:
        k["path"] = rel(k["path"])
    return data


def main(argv: list[str] | None = None) -> int:
    """Run ``medscan inspect``; return 0, or 2 when PATH does not exist."""
    args = _parser().parse_args(argv)
    try:
        found = discover(
            args.path,
            modalities=tuple(args.modality or ("CT",)),
            salt=args.salt,
            progress=not args.json and sys.stderr.isatty(),
        )
    except FileNotFoundError as exc:
        print(f"medscan inspect: {exc}", file=sys.stderr)
        return 2
    if args.json:
        data = _private(found.to_dict(), found.root, args.free_text)
        if not args.files:
            for s in data["series"] + data["other_series"]:
                s.pop("files", None)
        # ASCII JSON (non-ASCII escaped), and no lone surrogates from undecodable file names:
        # valid UTF-8 whatever the names and the terminal's encoding.
        sys.stdout.write(json.dumps(_printable(data), indent=2, ensure_ascii=True) + "\n")
    else:
        _print_table(found)
    return 0


if __name__ == "__main__":
    sys.exit(main())
