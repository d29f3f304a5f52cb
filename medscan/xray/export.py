"""Export a checkpoint to ONNX and TorchScript, and check that they agree with PyTorch.

Exported models keep the :class:`~medscan.xray.model.XrayNet` contract: input ``image``
``(B, 1, S, S)`` float32 grey in [0, 1] (preprocessed with :func:`medscan.xray.data.load_image`),
output ``logits`` ``(B, 2)``; P(PNEUMONIA) = softmax(logits)[:, 1]. The decision threshold and
preprocessing facts are written beside them in ``model.json``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from medscan.io.atomic import atomic_write, write_text


def export_model(model, info: dict, output: str | Path, formats=("onnx", "torchscript")) -> dict:
    """Write ``model.onnx`` and/or ``model.ts`` plus ``model.json`` into ``output``.

    ONNX uses torch's TorchScript-based exporter (``dynamo=False``; opset 17, dynamic batch),
    which needs no ``onnxscript``. TorchScript is ``torch.jit.trace`` (the timm models here have
    no data-dependent control flow).

    Returns
    -------
    dict
        ``{format: path}``.
    """
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    size = int(info["image_size"])
    model = model.eval()
    example = torch.rand(2, 1, size, size)
    written: dict[str, str] = {}
    if "onnx" in formats:

        def write_onnx(tmp: Path) -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    model, (example,), str(tmp), dynamo=False, opset_version=17,
                    input_names=["image"], output_names=["logits"],
                    dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                )

        written["onnx"] = str(atomic_write(output / "model.onnx", write_onnx))
    if "torchscript" in formats:
        with torch.no_grad():
            traced = torch.jit.trace(model, example)
        written["torchscript"] = str(atomic_write(output / "model.ts",
                                                  lambda tmp: traced.save(str(tmp))))
    meta = {k: info.get(k) for k in ("model_name", "image_size", "classes", "resize",
                                     "jpeg_draft", "threshold", "threshold_method")}
    meta.update(input="image: float32 (B, 1, S, S) grey in [0, 1]",
                output="logits: float32 (B, 2); P(PNEUMONIA) = softmax(logits)[:, 1]",
                files=written)
    write_text(output / "model.json", json.dumps(meta, indent=2))
    return written


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def compare_exports(model, files: dict, images: np.ndarray) -> dict:
    """Max absolute difference of P(PNEUMONIA) between PyTorch and each exported model.

    Parameters
    ----------
    images : ndarray, float32, (N, S, S)
        Preprocessed images.
    """
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1)
    with torch.no_grad():
        ref = torch.softmax(model.eval()(x), 1)[:, 1].numpy()
    diffs = {}
    if "onnx" in files:
        import onnxruntime as ort

        sess = ort.InferenceSession(files["onnx"], providers=["CPUExecutionProvider"])
        diffs["onnx"] = float(np.abs(_softmax(sess.run(None, {"image": x.numpy()})[0])[:, 1]
                                     - ref).max())
    if "torchscript" in files:
        ts = torch.jit.load(files["torchscript"])
        with torch.no_grad():
            diffs["torchscript"] = float(np.abs(torch.softmax(ts(x), 1)[:, 1].numpy()
                                                - ref).max())
    return diffs
