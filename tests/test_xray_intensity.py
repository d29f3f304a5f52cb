"""One intensity policy for every X-ray container, folder expansion by content, bombs (issue 16/19).

Real radiographs (the embedded sample and the originals in ../shared/data/xray) are written
as 8-bit PNG, 16-bit PNG, 12-bit data in a 16-bit PNG with and without sBIT, and DICOM DX
MONOCHROME1/2 with and without a VOI window or VOI LUT, one small generator per container.
The same picture must give the same model input (within 1%) from each of them; the
reference is the 8-bit PNG decoded by Pillow and divided by 255 in NumPy.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from xray_inputs import (
    display_picture,
    to_12bit,
    write_all,
    write_dicom,
    write_png8,
    write_png12_in_16,
    write_png_bomb,
)

from medscan.xray import data as xd


def _pictures(sample_xray: Path) -> list[Path]:
    here = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "xray"
    files = [sorted((sample_xray / "PNEUMONIA").glob("*.jpeg"))[0]]
    if here.is_dir():  # a large NORMAL original and an RGB PNEUMONIA original
        files.append(here / "val" / "NORMAL" / sorted(p.name for p in
                                                       (here / "val" / "NORMAL").iterdir())[0])
    return files


# ----------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("which", [0, 1])
def test_same_picture_same_model_input_from_every_container(which, sample_xray, tmp_path,
                                                             caplog):
    pictures = _pictures(sample_xray)
    if which >= len(pictures):
        pytest.skip("../shared/data/xray not present (a full-resolution original)")
    v = display_picture(pictures[which])
    files = write_all(tmp_path, v)
    reference = np.asarray(Image.open(files["png8.png"]), dtype=np.float32) / 255
    ref_input = xd.preprocess(reference, 224)
    with caplog.at_level(logging.WARNING, logger="medscan.xray.data"):
        for name, path in files.items():
            full = xd.read_image(path)
            assert full.shape == v.shape and full.dtype == np.float32, name
            np.testing.assert_allclose(full, reference, atol=0.01, err_msg=name)
            model_input = xd.load_image(path, 224)
            assert np.abs(model_input - ref_input).max() < 0.01, name
            assert abs(model_input.mean() - ref_input.mean()) < 0.01 * ref_input.mean(), name
    # 12-bit data in 16 bits without sBIT: windowed, and the user is told
    warned = [r.getMessage() for r in caplog.records if "png12.png" in r.getMessage()]
    assert warned and "6.2% of its 16-bit range" in warned[0], warned  # once per read
    assert "percentile window" in warned[0]
    assert not [r for r in caplog.records if "png8.png" in r.getMessage()]


def test_twelve_bit_png_was_near_black_before(sample_xray, tmp_path):
    """The issue's instance: /65535 gave mean 0.03; the policy gives the 8-bit picture's mean."""
    v = display_picture(sorted((sample_xray / "NORMAL").glob("*.jpeg"))[0])
    write_png12_in_16(tmp_path / "a.png", v, sbit=False)
    naive = np.asarray(Image.open(tmp_path / "a.png"), dtype=np.float64) / 65535
    assert naive.mean() < 0.1
    assert abs(xd.read_image(tmp_path / "a.png").mean() - v.mean() / 255) < 0.005


def test_png_sbit_is_read_and_spec_scaled_sbit_too(sample_xray, tmp_path):
    v = display_picture(sorted((sample_xray / "NORMAL").glob("*.jpeg"))[1])
    write_png12_in_16(tmp_path / "unshifted.png", v, sbit=True)
    assert xd.png_sbit(tmp_path / "unshifted.png") == 12
    assert xd.png_sbit(tmp_path / "unshifted.png") == 12
    # spec-conformant: 12 significant bits scaled up to the full 16-bit range
    info = PngImagePlugin.PngInfo()
    info.add(b"sBIT", bytes([12]))
    Image.fromarray(to_12bit(v) * 16 + to_12bit(v) // 256).save(tmp_path / "shifted.png",
                                                                   pnginfo=info)
    for name in ("unshifted.png", "shifted.png"):
        np.testing.assert_allclose(xd.read_image(tmp_path / name), v / 255, atol=0.01)
    write_png8(tmp_path / "plain.png", v)
    assert xd.png_sbit(tmp_path / "plain.png") is None


def test_low_contrast_8bit_image_is_warned_about(sample_xray, tmp_path, caplog):
    v = display_picture(sorted((sample_xray / "NORMAL").glob("*.jpeg"))[0])
    dim = (v // 8).astype(np.uint8)  # uses 1/8 of the 8-bit range
    write_png8(tmp_path / "dim.png", dim)
    with caplog.at_level(logging.WARNING, logger="medscan.xray.data"):
        arr = xd.read_image(tmp_path / "dim.png")
    assert arr.max() <= 32 / 255  # 8-bit: the container's range is the known range
    assert any("dim.png" in r.getMessage() and "of its 8-bit range" in r.getMessage()
               for r in caplog.records)


# ----------------------------------------------------------------------------------- folders
def test_folder_expansion_finds_dicom_by_content_and_reports_the_rest(sample_xray, sample_ct,
                                                                      tmp_path):
    v = display_picture(sorted((sample_xray / "NORMAL").glob("*.jpeg"))[0])
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    files = write_all(root / "sub", v)
    jpeg = sorted((sample_xray / "NORMAL").glob("*.jpeg"))[0]
    (root / "x.JPG").write_bytes(jpeg.read_bytes())
    (root / "jpeg_no_suffix").write_bytes(jpeg.read_bytes())
    (root / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"\0" * 200)
    (root / "ct_slice").write_bytes(sorted(sample_ct.glob("*.dcm"))[0].read_bytes())
    (root / "link").symlink_to(root / "sub")
    found = xd.find_images([root])
    names = {p.name for p in found.images}
    assert names == {*files, "x.JPG", "jpeg_no_suffix", "ct_slice"}
    assert {p.name for p, _ in found.ignored} == {"notes.txt", ".DS_Store", "link"}
    assert all(reason for _, reason in found.ignored)
    assert found.unreadable == []
    # the CT slice is DICOM by content but not a radiograph: it is an item that fails by name
    with pytest.raises(xd.ImageReadError, match="modality 'CT'"):
        xd.read_image(root / "ct_slice")


def test_decompression_bomb_is_a_named_item_error(tmp_path):
    write_png_bomb(tmp_path / "bomb.png")
    with pytest.raises(xd.ImageReadError, match=r"bomb\.png.*decompression-bomb"):
        xd.read_image(tmp_path / "bomb.png")
    with pytest.raises(xd.ImageReadError, match=r"bomb\.png.*decompression-bomb"):
        xd.probe_image(tmp_path / "bomb.png")
    # the same limit for DICOM: a header claiming 20000 x 20000 is refused before decoding
    v = np.zeros((4, 4), np.uint8)
    write_dicom(tmp_path / "big.dcm", to_12bit(v), "MONOCHROME2", None)
    import pydicom

    ds = pydicom.dcmread(tmp_path / "big.dcm")
    ds.Rows = ds.Columns = 20000
    ds.save_as(tmp_path / "big.dcm")
    with pytest.raises(xd.ImageReadError, match=r"big\.dcm.*20000 x 20000.*decompression-bomb"):
        xd.read_image(tmp_path / "big.dcm")
