"""Volume <-> NIfTI on the embedded sample: both file flavours, RAS affine, exact voxels."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medscan.dicom import load_path
from medscan.volume import LPS_TO_RAS, Volume


@pytest.mark.parametrize("name", ["volume.nii.gz", "volume.nii"])
def test_to_nifti_round_trip(sample_ct, tmp_path, name):
    volume = load_path(sample_ct)
    path = volume.to_nifti(tmp_path / name)
    img = nib.load(str(path))
    np.testing.assert_allclose(img.affine, LPS_TO_RAS @ volume.affine, atol=1e-5)
    assert np.array_equal(np.asarray(img.dataobj), volume.hu.transpose(2, 1, 0))
    back = Volume.from_nifti(path)
    assert np.array_equal(back.hu, volume.hu)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-5)
    with pytest.raises(TypeError):
        volume.to_nifti(tmp_path / "bad.nii.gz", volume.hu[:-1])  # labels go via LabelMap
