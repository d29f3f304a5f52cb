"""medscan.xray.data on real chest X-rays: layouts, every image mode, patient ids/splits, guards."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from xray_inputs import write_dicom

from medscan.xray import data as xd


def _first(folder: Path, pattern: str = "*.jpeg") -> Path:
    return sorted(folder.glob(pattern))[0]


# ----------------------------------------------------------------------------------- layouts
def test_sample_layout_counts_and_patients(sample_xray):
    records = xd.scan_folder(sample_xray)
    assert len(records) == 16
    assert xd.class_counts(records) == {"NORMAL": 8, "PNEUMONIA": 8}
    ids = {r.path.name: r.patient_id for r in records}
    assert ids["person1003_bacteria_2934.jpeg"] == ids["person1003_virus_1685.jpeg"] == "person1003"
    assert ids["IM-0115-0001.jpeg"] == "IM-0115"
    assert all(r.label == (r.path.parent.name == "PNEUMONIA") for r in records)


def test_split_layout_prefers_split_folder(shared_xray):
    train = xd.scan_folder(shared_xray, "train")
    val = xd.scan_folder(shared_xray, "val")
    assert xd.class_counts(train) == {"NORMAL": 24, "PNEUMONIA": 25}
    assert xd.class_counts(val) == {"NORMAL": 16, "PNEUMONIA": 16}
    # the staged originals were drawn by patient: no patient in both
    assert xd.shared_patients(train, val) == {}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("person1_bacteria_1.jpeg", "person1"),
        ("person1372_bacteria_3501.jpeg", "person1372"),
        ("IM-0011-0001-0002.jpeg", "IM-0011"),
        ("NORMAL2-IM-0587-0001-0001.jpeg", "NORMAL2-IM-0587"),
        ("/some/dir/NORMAL2-IM-1345-0001.jpeg", "NORMAL2-IM-1345"),
        ("unrelated-name.png", "unrelated-name"),
    ],
)
def test_kermany_patient_ids(name, expected):
    assert xd.patient_id(name) == expected


def test_custom_patient_regex():
    assert xd.patient_id("site3_pt042_view2.png", r"^site\d+_(pt\d+)_") == "pt042"


def test_patient_disjoint_split_full_train(shared_xray_224):
    records = xd.scan_folder(shared_xray_224, "train")
    assert len(records) == 5216
    assert xd.class_counts(records) == {"NORMAL": 1341, "PNEUMONIA": 3875}
    train, val = xd.patient_split(records, 0.15, seed=0)
    assert len(train) + len(val) == 5216
    assert not {r.patient_id for r in train} & {r.patient_id for r in val}
    assert 0.12 < len(val) / 5216 < 0.18
    # stratified: class shares stay close to the whole set's
    share = xd.class_counts(val)["NORMAL"] / len(val)
    assert abs(share - 1341 / 5216) < 0.04
    # patients really repeat in this split, so an image-level split would leak
    assert len({r.patient_id for r in records}) < 0.8 * len(records)
    again = xd.patient_split(records, 0.15, seed=0)[1]
    assert [r.path for r in again] == [r.path for r in val]
    other = xd.patient_split(records, 0.15, seed=1)[1]
    assert [r.path for r in other] != [r.path for r in val]


# ----------------------------------------------------------------------------------- modes
@pytest.fixture
def grey_reference(sample_xray) -> np.ndarray:
    """A real X-ray as a display-ready 8-bit grey picture using its whole range (uint8, H x W).

    Stretched to its 0.01/99.99 percentiles: a 16-bit copy without sBIT has no other record
    of its range, and the intensity policy windows it by those percentiles.
    """
    with Image.open(_first(sample_xray / "NORMAL")) as img:
        grey = np.asarray(img.convert("L"), dtype=np.float64)
    lo, hi = np.percentile(grey, xd.PERCENTILE_WINDOW)
    return np.round(np.clip((grey - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def test_every_mode_loads_to_the_same_grey(tmp_path, grey_reference):
    ref = grey_reference.astype(np.float32) / 255
    img = Image.fromarray(grey_reference)
    img.save(tmp_path / "grey.png")
    img.convert("RGB").save(tmp_path / "rgb.png")
    rgba = img.convert("RGBA")
    rgba.save(tmp_path / "rgba.png")
    Image.fromarray(grey_reference.astype(np.uint16) * 257).save(tmp_path / "grey16.png")
    img.convert("P").save(tmp_path / "palette.png")
    img.convert("RGB").save(tmp_path / "rgb.jpeg", quality=95)
    twelve = grey_reference.astype(np.uint16) * 16  # 12-bit data, 0..4080
    write_dicom(tmp_path / "mono2.dcm", twelve, "MONOCHROME2", voi="window")
    write_dicom(tmp_path / "mono1.dcm", 4095 - twelve, "MONOCHROME1", voi=None)
    shutil.copy(tmp_path / "mono2.dcm", tmp_path / "no_suffix_dicom")

    for name in ("grey.png", "rgb.png", "rgba.png", "grey16.png", "palette.png"):
        arr = xd.read_image(tmp_path / name)
        assert arr.dtype == np.float32 and arr.shape == ref.shape, name
        np.testing.assert_allclose(arr, ref, atol=1 / 255 + 1e-6, err_msg=name)
    jpeg = xd.read_image(tmp_path / "rgb.jpeg")
    assert np.abs(jpeg - ref).mean() < 0.01
    for name in ("mono2.dcm", "mono1.dcm", "no_suffix_dicom"):
        arr = xd.read_image(tmp_path / name)
        assert arr.shape == ref.shape and 0 <= arr.min() and arr.max() <= 1, name
        # MONOCHROME1 is inverted back: bright bone stays bright
        assert np.corrcoef(arr.ravel(), ref.ravel())[0, 1] > 0.999, name


def test_rgba_alpha_is_composited(tmp_path, grey_reference):
    rgba = np.dstack([grey_reference] * 3 + [np.full_like(grey_reference, 255)])
    rgba[:10, :, 3] = 0  # transparent band
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    arr = xd.read_image(tmp_path / "a.png")
    assert arr[:10].max() == 0
    assert np.allclose(arr[10:], grey_reference[10:] / 255, atol=1 / 255)


def test_originals_all_load_and_size_does_not_leak(shared_xray):
    files = sorted(shared_xray.rglob("*.jpeg"))
    assert len(files) == 81
    modes = set()
    for path in files:
        with Image.open(path) as img:
            modes.add(img.mode)
        out = xd.load_image(path, 96)
        assert out.shape == (96, 96) and out.dtype == np.float32
        assert 0 <= out.min() and out.max() <= 1
    assert {"L", "RGB"} <= modes  # the mix is real
    # the same picture at half size gives (nearly) the same model input
    big = next(p for p in files if p.parent.name == "NORMAL")
    full = xd.read_image(big)
    img = Image.fromarray(np.round(full * 255).astype(np.uint8))
    half = np.asarray(img.resize((img.width // 2, img.height // 2)), np.float32) / 255
    a = xd.preprocess(full, 96)
    b = xd.preprocess(half, 96)
    assert np.abs(a - b).mean() < 0.01
    # JPEG draft decoding changes the model input by very little
    nodraft = xd.load_image(big, 96, jpeg_draft=False)
    assert np.abs(xd.load_image(big, 96) - nodraft).mean() < 0.01


def test_pad_keeps_aspect(grey_reference):
    wide = np.zeros((50, 100), np.float32) + 1.0
    out = xd.preprocess(wide, 64, "pad")
    assert out.shape == (64, 64)
    assert out[0].max() == 0 and out[32].min() > 0.99  # black bars top/bottom only
    with pytest.raises(ValueError, match="squash"):
        xd.preprocess(wide, 64, "stretch")


# ----------------------------------------------------------------------------------- bad input
def test_unreadable_image_names_the_file(tmp_path, sample_xray):
    bad = tmp_path / "broken.jpeg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(xd.ImageReadError, match=r"broken\.jpeg"):
        xd.read_image(bad)
    truncated = tmp_path / "truncated.jpeg"
    truncated.write_bytes(_first(sample_xray / "NORMAL").read_bytes()[:2000])
    with pytest.raises(xd.ImageReadError, match=r"truncated\.jpeg"):
        xd.read_image(truncated)
    with pytest.raises(xd.ImageReadError, match=r"missing\.png"):
        xd.read_image(tmp_path / "missing.png")


def test_ct_dicom_is_refused(tmp_path, sample_ct):
    ct = sorted(sample_ct.glob("*.dcm"))[0]
    with pytest.raises(xd.ImageReadError, match="modality 'CT'"):
        xd.read_image(ct)


def test_layout_errors(tmp_path, sample_xray):
    root = tmp_path / "data"
    shutil.copytree(sample_xray, root)
    (root / "COVID").mkdir()
    shutil.copy(_first(sample_xray / "NORMAL"), root / "COVID" / "x.jpeg")
    with pytest.raises(xd.DatasetError, match=r"COVID.*unknown class"):
        xd.scan_folder(root)
    shutil.rmtree(root / "COVID")
    for f in (root / "NORMAL").iterdir():
        f.unlink()
    with pytest.raises(xd.DatasetError, match=r"NORMAL: empty class folder"):
        xd.scan_folder(root)
    with pytest.raises(xd.DatasetError, match="does not exist"):
        xd.scan_folder(tmp_path / "nothing")
    with pytest.raises(xd.DatasetError, match="no such file"):
        xd.list_images([tmp_path / "nothing.png"])


def test_leakage_check_by_content(shared_xray_224, shared_xray):
    train = xd.scan_folder(shared_xray_224, "train")[:50]
    train_hashes = {xd.content_hash(r.path) for r in train}
    evaluation = {str(r.path): xd.content_hash(r.path) for r in train[:3]}
    with pytest.raises(xd.LeakageError, match=r"3 of 3 .*allow_train_overlap"):
        xd.leakage_check(evaluation, train_hashes)
    assert len(xd.leakage_check(evaluation, train_hashes, allow=True)) == 3
    # a re-encoded original of a training image is NOT byte-identical: only patients overlap
    originals = xd.scan_folder(shared_xray, "train")
    hashes = {str(r.path): xd.content_hash(r.path) for r in originals}
    all_train = xd.scan_folder(shared_xray_224, "train")
    all_hashes = {xd.content_hash(r.path) for r in all_train}
    assert xd.leakage_check(hashes, all_hashes) == []
    shared = xd.shared_patients(all_train, originals)
    assert sum(shared.values()) == len(originals)  # every original's patient is in xray-224


def test_dataset_and_augment(sample_xray):
    import torch

    records = xd.scan_folder(sample_xray)
    aug = xd.make_augment({"degrees": 7, "translate": 0.05, "scale": [0.9, 1.1],
                           "brightness": 0.2, "contrast": 0.2, "gamma": [0.8, 1.2]})
    ds = xd.XrayDataset(records, 64, augment=aug)
    torch.manual_seed(0)
    x, y = ds[0]
    assert x.shape == (1, 64, 64) and x.dtype == torch.float32 and y == 0
    plain = xd.XrayDataset(records, 64)[0][0]
    assert not torch.equal(x, plain) and 0 <= x.min() and x.max() <= 1
    assert xd.make_augment({"enabled": False}) is None
