"""Which layers can be int8? Set5 Y-PSNR (x2, x4) of static-quantisation variants against fp32.

    python benchmarks/int8_variants.py WEIGHTS.safetensors

Each variant quantises the ONNX model with ONNX Runtime (QDQ, per-channel int8 weights, uint8
activations) on :func:`vdsr.export.calibration_inputs`, keeping the listed convolutions (and the
final residual addition) in fp32. The package's int8 backend uses ``first3+last, minmax``.
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from vdsr.export import calibration_inputs, onnx_bytes
from vdsr.io.images import list_images, load_image
from vdsr.quality.metrics import psnr
from vdsr.quality.protocol import make_pair
from vdsr.weights import load_model

SCALES = (2, 4)


class Reader(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, crop: int) -> None:
        self.items = iter(calibration_inputs(1, crop))

    def get_next(self) -> dict[str, Any] | None:
        x = next(self.items, None)
        return None if x is None else {"input": x}


def main() -> None:
    model, _ = load_model(sys.argv[1] if len(sys.argv) > 1 else None)
    fp32 = onnx.load_from_string(onnx_bytes(model))
    convs = [n.name for n in fp32.graph.node if n.op_type == "Conv"]
    images = [load_image(f).floats()[0] for f in list_images(Path("../shared/datasets/Set5"))]
    pairs = {s: [make_pair(im, s) for im in images] for s in SCALES}

    def score(path: Path) -> list[float]:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = []
        for s, ps in pairs.items():
            vals = []
            for gt, bic in ps:
                y = sess.run(None, {"input": (bic / 255).astype(np.float32)[None, None]})[0][0, 0]
                vals.append(psnr(gt, np.clip(y * 255, 0, 255), border=s))
            out.append(float(np.mean(vals)))
        return out

    E, M, P = CalibrationMethod.Entropy, CalibrationMethod.MinMax, CalibrationMethod.Percentile
    variants = {
        "first+last, entropy": (E, [convs[0], convs[-1]], 120),
        "first+last, minmax": (M, [convs[0], convs[-1]], 120),
        "first+last, percentile": (P, [convs[0], convs[-1]], 120),
        "first+last, entropy, 240² crops": (E, [convs[0], convs[-1]], 240),
        "first+last 3, entropy": (E, [convs[0], *convs[-3:]], 120),
        "first2+last, entropy": (E, [*convs[:2], convs[-1]], 120),
        "first3+last, entropy": (E, [*convs[:3], convs[-1]], 120),
        "first3+last, minmax": (M, [*convs[:3], convs[-1]], 120),
        "first10+last, entropy": (E, [*convs[:10], convs[-1]], 120),
    }
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "fp32.onnx"
        onnx.save(fp32, str(src))
        base = score(src)
        print(f"{'fp32':<34} " + "  ".join(f"x{s} {v:.3f}" for s, v in zip(SCALES, base, strict=True)))
        for name, (method, keep, crop) in variants.items():
            dst = Path(tmp) / "int8.onnx"
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_static(str(src), str(dst), Reader(crop), quant_format=QuantFormat.QDQ,
                                per_channel=True, activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8, calibrate_method=method,
                                nodes_to_exclude=[*keep, fp32.graph.node[-1].name])
            got = score(dst)
            print(f"{name:<34} " + "  ".join(f"x{s} {v:.3f} ({v - b:+.3f})"
                                             for s, v, b in zip(SCALES, got, base, strict=True)),
                  flush=True)


if __name__ == "__main__":
    main()
