"""``medscan view PATH...``: open cases, batch outputs, NIfTI/mesh files or DICOM folders."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medscan.napari._reader import classify


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``medscan view``."""
    parser = argparse.ArgumentParser(
        prog="medscan view",
        description=(
            "Open medscan outputs in napari: a case folder or a batch output folder from "
            "`medscan segment`, one NIfTI or mesh file it wrote, or a DICOM folder. All layers "
            "share one world: patient LPS millimetres, napari axes (I, P, L) = (-z, y, x)."
        ),
    )
    parser.add_argument("paths", nargs="+", type=Path, help="what to open")
    parser.add_argument(
        "--3d",
        dest="three_d",
        action="store_true",
        help="start in 3D (anterior view; CT and labels hidden so the meshes show)",
    )
    parser.add_argument(
        "--screenshot",
        type=Path,
        metavar="PNG",
        help="save a screenshot of the canvas to PNG and exit (no interactive session)",
    )
    parser.add_argument(
        "--no-widgets", action="store_true", help="do not dock the CT window widget"
    )
    return parser


def show_3d(viewer, hide_volumes: bool = True) -> None:
    """Switch to 3D with an anterior view, head up (world (I, P, L): look along +P, up = -I).

    CT images and label maps are hidden by default in 3D: their volume renderings cover the
    meshes, which are the 3D view of the tissues. Tick them back on in the layer list.
    """
    from napari.layers import Image, Labels

    if hide_volumes:
        for layer in viewer.layers:
            volume = isinstance(layer, Labels) or (isinstance(layer, Image) and not layer.rgb)
            if volume and layer.ndim == 3:
                layer.visible = False
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    camera(viewer).set_view_direction((0.0, 1.0, 0.0), up_direction=(-1.0, 0.0, 0.0))


def camera(viewer):
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def main(argv: list[str] | None = None) -> int:
    """Run ``medscan view``; returns the exit code (2 for a path medscan cannot open)."""
    args = build_parser().parse_args(argv)
    for path in args.paths:
        if not path.exists():
            print(f"medscan view: {path}: no such file or folder", file=sys.stderr)
            return 2
        if classify(path) is None:
            print(
                f"medscan view: {path}: not a medscan case, batch folder, NIfTI, mesh or "
                "DICOM folder",
                file=sys.stderr,
            )
            return 2
    import napari

    viewer = napari.Viewer(title="medscan")
    for path in args.paths:
        viewer.open(str(path), plugin="medscan")
    if not args.no_widgets:
        viewer.window.add_plugin_dock_widget("medscan", "CT window")
    if args.three_d:
        show_3d(viewer)
    else:
        viewer.reset_view()
    if args.screenshot:
        args.screenshot.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(args.screenshot), canvas_only=True, flash=False)
        viewer.close()
        print(f"medscan view: screenshot written to {args.screenshot}")
        return 0
    napari.run()
    return 0
