"""``medscan inspect PATH [--json]``: list the DICOM series under a folder and their QC findings.

Reads headers only. On a terminal it prints a table that fits the terminal (80 columns
included), findings, and skipped files counted by reason (``--verbose`` lists them); when stdout
is not a terminal (a pipe, a file) or with ``--tsv`` it prints plain tab-separated rows, one per
series, with findings and the skip summary on stderr. ``--json`` prints
``{"root", "series": [...], "other_series": [...], "skipped": [...], "skipped_by_reason"}``,
each series with
``case_id, patient_id, modality, n_slices, shape, spacing, transfer_syntax, findings`` (no
patient name or PatientID: ids are keyed hashes, see medscan.dicom.identity).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medscan.dicom.discover import Discovery, discover
from medscan.dicom.headers import SkippedFile
from medscan.dicom.identity import SecretError
from medscan.dicom.series import SeriesInfo, blocking_findings, loadable

if TYPE_CHECKING:
    from rich.console import Console


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
    p.add_argument("-v", "--verbose", action="store_true",
                   help="list every skipped file with its reason (default: counts per reason)")
    p.add_argument("--tsv", action="store_true",
                   help="tab-separated rows on a terminal too (default when stdout is not one)")
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


#: Columns of the series table and of the TSV (same values; the JSON has the full details).
COLUMNS = ("case", "patient", "mod", "slices", "shape z,y,x", "spacing mm", "syntax", "QC")


def _series_row(s: SeriesInfo) -> list[str]:
    sz, sy, sx = s.spacing
    codes = ",".join(f"{f.code}" for f in s.findings) or "-"
    return [
        s.case_id,
        s.patient_id,
        s.modality,
        str(s.n_slices),
        "x".join(str(v) for v in s.shape),
        f"{sz:.3g}x{sy:.3g}x{sx:.3g}",
        SHORT_SYNTAX.get(s.transfer_syntax, s.transfer_syntax_name),
        codes,
    ]


def _loaded(s: SeriesInfo) -> str:
    """``yes``, or ``refused (codes)`` when ``load``/``segment`` would refuse the series."""
    if loadable(s):
        return "yes"
    codes = ",".join(dict.fromkeys(f.code for f in blocking_findings(s))) or "no geometry"
    return f"refused ({codes})"


def _qc_counts(s: SeriesInfo) -> str:
    """``"1 error, 2 warning"``-style counts of a series' findings by severity, or ``"-"``."""
    counts = Counter(f.severity for f in s.findings)
    return ", ".join(f"{n} {sev}{'s' if n > 1 else ''}"
                     for sev, n in sorted(counts.items())) or "-"


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to the inspected root (the root itself when it is a file)."""
    base = root if root.is_dir() else root.parent
    try:
        text = str(Path(path).relative_to(base))
    except ValueError:
        text = str(path)
    return _printable(text)


def reason_kind(reason: str) -> str:
    """The kind of a skip reason: its text before the first ``": "`` (details follow it)."""
    return reason.split(": ", 1)[0]


def group_skipped(skipped: list[SkippedFile]) -> list[tuple[str, int]]:
    """``(reason kind, number of files)`` for the skipped files, most frequent first."""
    counts = Counter(reason_kind(k.reason) for k in skipped)
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def _skipped_summary(skipped: list[SkippedFile]) -> str:
    groups = "; ".join(f"{n} {kind}" for kind, n in group_skipped(skipped))
    return f"skipped {len(skipped)} file(s): {groups}"


def _print_table(found: Discovery, console: Console | None = None,
                 verbose: bool = False) -> None:
    """Series table sized to the terminal (80 columns fit), findings, skipped files by reason."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"DICOM series under {found.root}", box=box.SIMPLE_HEAD,
                  pad_edge=False, title_justify="left", collapse_padding=True, show_edge=False)
    # The slice count is the shape's first number and the modality is CT unless --modality
    # asked for more: both columns only where they add something, so 80 columns fit.
    mixed = len({s.modality for s in found.series}) > 1
    keep = [c for c in COLUMNS if c != "slices" and (mixed or c != "mod")]
    for col in keep:
        # ids, shapes and spacings never fold; syntax and QC codes wrap when space is short
        wrap = col in {"syntax", "QC"}
        table.add_column(col, no_wrap=not wrap, overflow="fold" if wrap else "ellipsis",
                         ratio=1 if wrap else None)
    for s in found.series:
        row = dict(zip(COLUMNS, _series_row(s), strict=True))
        row["QC"] = _qc_counts(s)  # the codes and messages follow the table
        table.add_row(*(row[c] for c in keep))
    console.print(table)
    for s in found.series:
        for f in s.findings:
            colour = {"error": "red", "warning": "yellow"}.get(f.severity, "cyan")
            console.print(f"[{colour}]{s.case_id} {f.severity} {f.code}[/]: {f.message}",
                          highlight=False)
        if not loadable(s):
            console.print(f"[red]{s.case_id} is not loaded[/]: medscan segment / load refuse it "
                          f"({_loaded(s)})", highlight=False)
    if found.other_series:
        other = Table(title="Other series (not loaded)", box=box.SIMPLE_HEAD, pad_edge=False,
                      title_justify="left", collapse_padding=True, show_edge=False)
        for col in ("case", "patient", "mod", "files", "QC"):
            other.add_column(col, overflow="fold")
        for s in found.other_series:
            codes = ",".join(f.code for f in s.findings) or "-"
            other.add_row(s.case_id, s.patient_id, s.modality, str(s.n_slices), codes)
        console.print(other)
    if found.skipped:
        skipped = Table(title=f"Skipped files ({len(found.skipped)})", box=box.SIMPLE_HEAD,
                        pad_edge=False, title_justify="left", collapse_padding=True,
                        show_edge=False)
        skipped.add_column("files", justify="right", no_wrap=True)
        skipped.add_column("reason", overflow="fold")
        for kind, n in group_skipped(found.skipped):
            skipped.add_row(str(n), kind)
        console.print(skipped)
        if verbose:
            for k in found.skipped:
                console.print(f"{_relative(k.path, found.root)}: {_printable(k.reason)}",
                              highlight=False, markup=False)
        else:
            console.print("(medscan inspect --verbose lists the files)", style="dim")


def _print_tsv(found: Discovery, verbose: bool = False) -> None:
    """Plain tab-separated series rows on stdout (for pipes); findings and skips on stderr."""
    out = sys.stdout
    out.write("\t".join(c.replace(" ", "_") for c in (*COLUMNS, "loaded")) + "\n")
    for s in found.series:
        out.write("\t".join([*_series_row(s), _loaded(s)]) + "\n")
    for s in found.other_series:
        out.write("\t".join([*_series_row(s), "no"]) + "\n")
    out.flush()
    for s in (*found.series, *found.other_series):
        for f in s.findings:
            print(f"{s.case_id} {f.severity} {f.code}: {f.message}", file=sys.stderr)
    if found.skipped:
        print(f"medscan inspect: {_skipped_summary(found.skipped)}"
              + ("" if verbose else " (--verbose lists them)"), file=sys.stderr)
        if verbose:
            for k in found.skipped:
                print(f"  {_relative(k.path, found.root)}: {_printable(k.reason)}",
                      file=sys.stderr)


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

    base = Path(root) if Path(root).is_dir() else Path(root).parent
    prefixes = sorted({f"{base}{os.sep}", f"{base.resolve()}{os.sep}"}, key=len, reverse=True)

    def inside(value: Any) -> Any:  # paths inside messages and details, made relative
        if isinstance(value, str):
            for prefix in prefixes:
                value = value.replace(prefix, "")
            return value
        if isinstance(value, dict):
            return {k: inside(v) for k, v in value.items()}
        if isinstance(value, list):
            return [inside(v) for v in value]
        return value

    for s in data["series"] + data["other_series"]:
        s["metadata"] = series_metadata(s.get("metadata", {}), free_text)
        if "files" in s:
            s["files"] = [rel(f) for f in s["files"]]
        for f in s.get("findings", []):
            f["files"] = [rel(x) for x in f.get("files", [])]
            f["message"] = inside(f.get("message", ""))
            f["details"] = inside(f.get("details", {}))
    for k in data["skipped"]:
        k["path"] = rel(k["path"])
        k["reason"] = inside(k.get("reason", ""))
    return data


def main(argv: list[str] | None = None) -> int:
    """Run ``medscan inspect``; return 0, or 2 (one line on stderr).

    2 when PATH does not exist or the pseudonym secret is unusable (empty, shorter than 16
    bytes, unreadable).
    """
    args = _parser().parse_args(argv)
    try:
        found = discover(
            args.path,
            modalities=tuple(args.modality or ("CT",)),
            salt=args.salt,
            progress=not args.json and sys.stderr.isatty(),
        )
    except (FileNotFoundError, SecretError) as exc:
        print(f"medscan inspect: {exc}", file=sys.stderr)
        return 2
    if args.json:
        data = _private(found.to_dict(), found.root, args.free_text)
        if not args.files:
            for s in data["series"] + data["other_series"]:
                s.pop("files", None)
        data["skipped_by_reason"] = [
            {"reason": kind, "count": n} for kind, n in group_skipped(found.skipped)]
        # ASCII JSON (non-ASCII escaped), and no lone surrogates from undecodable file names:
        # valid UTF-8 whatever the names and the terminal's encoding.
        sys.stdout.write(json.dumps(_printable(data), indent=2, ensure_ascii=True) + "\n")
    elif args.tsv or not sys.stdout.isatty():
        _print_tsv(found, verbose=args.verbose)
    else:
        _print_table(found, verbose=args.verbose)
    sys.stdout.flush()  # a closed pipe (`| head`) surfaces here, inside medscan.cli's handler
    return 0


if __name__ == "__main__":
    sys.exit(main())
