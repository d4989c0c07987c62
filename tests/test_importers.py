"""vdsr.weights.importers: published VDSR weights (MatConvNet ``.mat``, pytorch-vdsr ``.pth``) and
training checkpoints into our ``.safetensors``, safely: no code runs from a pickle, crafted
files are one clear error, and ``vdsr convert`` says which file and why."""

from __future__ import annotations

import io
import math
import os
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import (
    _EDITS,
    _FUZZ,
    REFERENCE,
    _mutated,
    check_one_line_error,
    needs_shared,
    random_rgb,
    run,
    tiny_model,
    write_png,
)
from vdsr.cli import main
from vdsr.errors import TrainingError, WeightsError
from vdsr.weights import load_weights
from vdsr.weights.importers import RestrictedUnpickler, import_pytorch_vdsr


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))

    marker = ""


def _evil_pickle(marker: Path) -> bytes:
    _Evil.marker = str(marker)
    return pickle.dumps({"epoch": 1, "model": _Evil()}, protocol=2)


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = _evil_pickle(marker)
    # Direct: the restricted unpickler refuses the global before anything runs.
    with pytest.raises(pickle.UnpicklingError, match="refused global"):
        RestrictedUnpickler(io.BytesIO(payload)).load()
    # As a legacy checkpoint file: header pickles, then the evil one.
    head = b"".join(pickle.dumps(x, protocol=2) for x in (0x1950A86A20F9469CFC6C, 1001, {}))
    evil = tmp_path / "evil.pth"
    evil.write_bytes(head + payload)
    with pytest.raises(WeightsError, match="refused global"):
        import_pytorch_vdsr(evil)
    # Even the very first pickle is read restrictedly.
    evil.write_bytes(payload)
    with pytest.raises(WeightsError, match="refused"):
        import_pytorch_vdsr(evil)
    # Resume states go through torch.load(weights_only=True), which refuses it too.
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(payload)
    from vdsr.weights.checkpoints import load_checkpoint

    with pytest.raises(TrainingError, match="unsafe|unreadable"):
        load_checkpoint(ckpt)
    assert not marker.exists()


@needs_shared
def test_pytorch_vdsr_import_structure() -> None:
    state, meta = import_pytorch_vdsr(REFERENCE / "pytorch_vdsr_model_epoch_50.pth")
    assert meta.config.depth == 20 and meta.config.bias is False
    assert state["input.weight"].shape == (64, 1, 3, 3)
    assert state["output.weight"].shape == (1, 64, 3, 3)
    assert len(state) == 20
    assert all(torch.isfinite(v).all() for v in state.values())


def test_legacy_reader_rejects_bad_magic(tmp_path: Path) -> None:
    p = tmp_path / "x.pth"
    p.write_bytes(pickle.dumps(12345, protocol=2))
    with pytest.raises(WeightsError, match="magic"):
        import_pytorch_vdsr(p)
    p.write_bytes(b"PK\x03\x04" + b"\0" * 20)
    with pytest.raises(WeightsError, match="zip"):
        import_pytorch_vdsr(p)
    assert struct  # keep import used


# ------------------------------------------------------------------------------------------------
# Issue 23 item 9: crafted pytorch-vdsr pickles (legacy torch format), written opcode by opcode.
# ------------------------------------------------------------------------------------------------


class _G:
    """A global (``module.name``) in a hand-written pickle."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name


class _Call:
    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args


class _Obj:
    """``cls.__new__(cls)`` then ``__setstate__(state)``: how modules are pickled."""

    def __init__(self, cls: _G, state: dict[str, object]) -> None:
        self.cls, self.state = cls, state


class _PersId:
    def __init__(self, pid: tuple[object, ...]) -> None:
        self.pid = pid


def _pickle_ops(value: object) -> bytes:
    """Protocol-2 opcodes for ``value``; enough of pickle for torch's legacy checkpoints."""
    if isinstance(value, _G):
        return b"c" + value.module.encode() + b"\n" + value.name.encode() + b"\n"
    if isinstance(value, _Call):
        return _pickle_ops(value.func) + _pickle_ops(tuple(value.args)) + b"R"
    if isinstance(value, _Obj):
        return _pickle_ops(value.cls) + b")\x81" + _pickle_ops(value.state) + b"b"
    if isinstance(value, _PersId):
        return _pickle_ops(value.pid) + b"Q"
    if value is None:
        return b"N"
    if isinstance(value, bool):
        return b"\x88" if value else b"\x89"
    if isinstance(value, int):
        raw = value.to_bytes((value.bit_length() + 8) // 8 or 1, "little", signed=True)
        return b"\x8a" + bytes([len(raw)]) + raw
    if isinstance(value, float):
        return b"G" + struct.pack(">d", value)
    if isinstance(value, str):
        data = value.encode()
        return b"X" + struct.pack("<I", len(data)) + data
    if isinstance(value, tuple):
        return b"(" + b"".join(_pickle_ops(v) for v in value) + b"t"
    if isinstance(value, dict):
        return b"}(" + b"".join(_pickle_ops(k) + _pickle_ops(v) for k, v in value.items()) + b"u"
    raise TypeError(value)


def _tensor(key: str, size: tuple[int, ...], stride: tuple[int, ...] | None = None,
            storage_numel: int | None = None, offset: int = 0) -> _Call:
    if stride is None:  # contiguous
        stride = tuple(int(math.prod(size[i + 1:])) for i in range(len(size)))
    numel = math.prod(size) if storage_numel is None else storage_numel
    storage = _PersId(("storage", _G("torch", "FloatStorage"), key, "cpu", numel, None))
    tensor = _Call(_G("torch._utils", "_rebuild_tensor_v2"), storage, offset, size, stride, False,
                   _Call(_G("collections", "OrderedDict")))
    return _Call(_G("torch._utils", "_rebuild_parameter"), tensor, True, _Call(_G("collections", "OrderedDict")))


def _legacy_checkpoint(path: Path, sizes: list[tuple[int, ...]],
                       override: dict[int, _Call] | None = None) -> Path:
    """A pytorch-vdsr checkpoint (no biases) of convolutions of ``sizes``; ``override`` replaces
    layer i's weight. Storage ``str(i)`` holds ``numel`` float32 values (random, small)."""
    override = override or {}
    weights = [override.get(i, _tensor(str(i), size)) for i, size in enumerate(sizes)]

    def conv(w: _Call) -> _Obj:
        return _Obj(_G("torch.nn.modules.conv", "Conv2d"), {"_parameters": {"weight": w, "bias": None},
                                                            "_modules": {}})

    blocks = {str(i): _Obj(_G("vdsr", "Conv_ReLU_Block"), {"_modules": {"conv": conv(w)}})
              for i, w in enumerate(weights[1:-1])}
    net = _Obj(_G("vdsr", "Net"), {"_modules": {
        "input": conv(weights[0]), "output": conv(weights[-1]),
        "residual_layer": _Obj(_G("torch.nn.modules.container", "Sequential"), {"_modules": blocks})}})
    body = b"\x80\x02" + _pickle_ops({"epoch": 1, "model": net}) + b"."
    storages = []
    for w in weights:
        pid = w.args[0].args[0].pid  # type: ignore[attr-defined]
        storages.append((pid[2], pid[4]))
    head = b"".join(pickle.dumps(x, protocol=2) for x in (0x1950A86A20F9469CFC6C, 1001, {}))
    tail = pickle.dumps([k for k, _ in storages], protocol=2)
    rng = np.random.default_rng(0)
    data = b"".join(struct.pack("<q", n) + (rng.standard_normal(n).astype("<f4") * 0.01).tobytes()
                    for _, n in storages)
    path.write_bytes(head + body + tail + data)
    return path


TINY_PTH = [(8, 1, 3, 3), (8, 8, 3, 3), (8, 8, 3, 3), (1, 8, 3, 3)]


def test_hand_written_checkpoint_imports(tmp_path: Path) -> None:
    """The writer above makes checkpoints the importer reads (so the refusals below are real)."""
    state, meta = import_pytorch_vdsr(_legacy_checkpoint(tmp_path / "ok.pth", TINY_PTH))
    assert (meta.config.depth, meta.config.width, meta.config.bias) == (4, 8, False)
    assert state["body.1.weight"].shape == (8, 8, 3, 3) and torch.isfinite(state["body.1.weight"]).all()


def test_crafted_views_are_refused_before_they_are_materialised(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 23 item 9: a 1-element storage viewed with stride 0 as a huge tensor was materialised
    at full size before the shape error (tracemalloc: 200 MB here; 2.5 GB RSS in the issue), or
    ended `vdsr convert` with "out of memory (try a smaller --tile or --batch-size)"; a first conv
    of (20000, 1, 3, 3) built a model with 14 GB layers (seen failing)."""
    import tracemalloc

    from vdsr.cli import main

    cases = {
        "stride0.pth": ({1: _tensor("1", (20000, 64, 3, 3), (0, 0, 0, 0), storage_numel=1)},
                        "tensor body.0.weight has shape (20000, 64, 3, 3), the architecture needs (8, 8, 3, 3)"),
        "stride0_same_shape.pth": ({1: _tensor("1", (8, 8, 3, 3), (0, 0, 0, 0), storage_numel=1)},
                                   "view larger than its storage"),
        "huge.pth": ({1: _tensor("1", (10**6, 10**6, 3, 3), (0, 0, 0, 0), storage_numel=1)}, "shape"),
        "negative_stride.pth": ({1: _tensor("1", (8, 8, 3, 3), (-1, 0, 0, 0))}, "bad shape, stride or offset"),
        "float_size.pth": ({1: _tensor("1", (8.5, 8, 3, 3), (72, 9, 3, 1), storage_numel=576)},  # type: ignore[arg-type]
                           "bad shape, stride or offset"),
        "offset_out.pth": ({1: _tensor("1", (8, 8, 3, 3), offset=10)}, "exceeds its storage"),
    }
    for name, (override, message) in cases.items():
        path = _legacy_checkpoint(tmp_path / name, TINY_PTH, override)
        tracemalloc.start()
        try:
            with pytest.raises(WeightsError, match=re.escape(name)) as info:
                import_pytorch_vdsr(path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert message in str(info.value), (name, str(info.value))
        assert peak < 20_000_000, (name, peak)
        assert main(["convert", str(path), "-o", str(tmp_path / "o.safetensors")]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and "out of memory" not in err, err
    wide = _legacy_checkpoint(tmp_path / "wide.pth", [(20000, 1, 3, 3), (1, 20000, 3, 3)])
    with pytest.raises(WeightsError, match="wide.pth: model width must be an integer from 1 to 1024, got 20000"):
        import_pytorch_vdsr(wide)
    deep = _legacy_checkpoint(tmp_path / "deep.pth", [(2, 1, 3, 3)] + [(2, 2, 3, 3)] * 600 + [(1, 2, 3, 3)])
    with pytest.raises(WeightsError, match="deep.pth: model depth must be an integer from 2 to 512, got 602"):
        import_pytorch_vdsr(deep)
    wrong = _legacy_checkpoint(tmp_path / "wrong.pth", [(8, 1, 3, 3), (8, 4, 3, 3), (1, 8, 3, 3)])
    with pytest.raises(WeightsError, match=r"wrong.pth: tensor body.0.weight has shape \(8, 4, 3, 3\)"):
        import_pytorch_vdsr(wrong)
    assert not (tmp_path / "o.safetensors").exists()


# ------------------------------------------------------------------------------------------------
# Issue 23 item 10: crafted MatConvNet .mat files.
# ------------------------------------------------------------------------------------------------


def _mat_model(path: Path, weights: list[object], biases: list[object]) -> Path:
    import scipy.io

    cells_w, cells_b = np.empty((1, len(weights)), dtype=object), np.empty((1, len(biases)), dtype=object)
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        cells_w[0, i], cells_b[0, i] = w, b
    scipy.io.savemat(str(path), {"model": {"weight": cells_w, "bias": cells_b}})
    return path


def _tiny_mat_cells() -> tuple[list[object], list[object]]:
    sd = tiny_model().state_dict()
    names = ["input", "body.0", "body.1", "output"]
    return ([sd[f"{n}.weight"].numpy().transpose(2, 3, 1, 0) for n in names],
            [sd[f"{n}.bias"].numpy().reshape(-1, 1) for n in names])


def test_matconvnet_layout_is_imported(tmp_path: Path) -> None:
    """MATLAB's (H, W, Cin, Cout) kernels, the output's trailing singleton dropped, as MATLAB does."""
    from vdsr.weights.importers import import_matconvnet

    weights, biases = _tiny_mat_cells()
    weights[-1] = weights[-1][..., 0]  # (3, 3, 8): MATLAB drops the trailing 1
    state, meta = import_matconvnet(_mat_model(tmp_path / "m.mat", weights, biases))
    assert meta.config == tiny_model().config
    assert all(torch.equal(state[k], v) for k, v in tiny_model().state_dict().items())


def test_crafted_mat_files_are_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 23 item 10: text, nested cells and a wrong shape raised ValueError tracebacks; width
    20000 too; complex values were silently truncated to their real part (seen failing)."""
    from vdsr.cli import main

    weights, biases = _tiny_mat_cells()
    nested = np.empty((1, 1), dtype=object)
    nested[0, 0] = weights[1]
    cases: dict[str, tuple[list[object], list[object], str]] = {
        "text.mat": ([weights[0], "not a kernel", *weights[2:]], biases, "weight{2} is text"),
        "nested.mat": ([weights[0], nested, *weights[2:]], biases, "weight{2} is a cell array"),
        "struct.mat": ([weights[0], {"a": 1.0}, *weights[2:]], biases, "weight{2} is a struct"),
        "complex.mat": ([weights[0], weights[1] * (1 + 1j), *weights[2:]], biases, "weight{2} holds complex"),
        "ints.mat": ([weights[0], weights[1].astype(np.int32), *weights[2:]], biases, "weight{2} is int32 numbers"),
        "shape.mat": ([weights[0], weights[1][:, :, :4], *weights[2:]], biases,
                      "weight{2} has shape (3, 3, 4, 8), layer 2 needs (3, 3, 8, 8)"),
        "bias.mat": (weights, [biases[0], biases[1][:3], *biases[2:]], "bias{2} has shape (3, 1), layer 2 needs 8"),
        "wide.mat": ([np.zeros((3, 3, 1, 20000), np.float32), *weights[1:]], biases,
                     "model width must be an integer from 1 to 1024, got 20000"),
        "five_d.mat": ([weights[0].reshape(3, 3, 1, 8, 1, 1)[..., 0], *weights[1:]], biases,
                       "weight{1} has shape"),
    }
    for name, (w, b, message) in cases.items():
        path = _mat_model(tmp_path / name, w, b)
        assert main(["convert", str(path), "-o", str(tmp_path / "o.safetensors")]) == 1, name
        err = capsys.readouterr().err
        assert err.startswith(f"vdsr: error: {path}: ") and err.count("\n") == 1, err
        assert message in err, (name, err)
    assert not (tmp_path / "o.safetensors").exists()


@_FUZZ
@given(edits=_EDITS, cut=st.one_of(st.none(), st.integers(0, 10_000)))
def test_fuzzed_pytorch_vdsr_checkpoints_raise_only_weights_errors(tmp_path: Path, edits: list[tuple[int, int]],
                                                                   cut: int | None) -> None:
    source = tmp_path / "ok.pth"
    if not source.exists():
        _legacy_checkpoint(source, TINY_PTH)
    from vdsr.weights.importers import convert

    path = tmp_path / "fuzz.pth"
    path.write_bytes(_mutated(source.read_bytes(), edits, cut))
    try:
        convert(path, tmp_path / "fuzz.safetensors")  # import, then the checks of save_weights
    except WeightsError:
        return
    load_weights(tmp_path / "fuzz.safetensors")


@_FUZZ
@given(edits=_EDITS, cut=st.one_of(st.none(), st.integers(0, 10_000)))
def test_fuzzed_mat_files_raise_only_weights_errors(tmp_path: Path, edits: list[tuple[int, int]],
                                                    cut: int | None) -> None:
    from vdsr.weights.importers import convert

    source = tmp_path / "ok.mat"
    if not source.exists():
        _mat_model(source, *_tiny_mat_cells())
    path = tmp_path / "fuzz.mat"
    path.write_bytes(_mutated(source.read_bytes(), edits, cut))
    try:
        convert(path, tmp_path / "fuzz.safetensors")
    except WeightsError:
        return
    load_weights(tmp_path / "fuzz.safetensors")


@pytest.mark.subprocess
def test_mat_files_that_crash_scipys_reader_are_refused_first(tmp_path: Path) -> None:
    """Found by the .mat fuzzer above: one changed byte made scipy.io.loadmat crash the process
    with SIGSEGV (scipy 1.17: a type code with no dtype; a flags word claiming an imaginary part
    that is not there). Seen failing: `vdsr convert` died of signal 11. Run in a child process,
    so that a crash fails this test instead of ending the run."""
    import subprocess
    import sys

    good = _mat_model(tmp_path / "good.mat", *_tiny_mat_cells()).read_bytes()
    first_data = good.index(struct.pack("<II", 7, 3 * 3 * 1 * 8 * 4))  # miSINGLE, weight{1}'s values
    first_flags = good.index(struct.pack("<IIII", 6, 8, 7, 0))  # miUINT32 flags: single, real
    bad_type = bytearray(good)
    bad_type[first_data] = 135
    imaginary = bytearray(good)
    imaginary[first_flags + 9] = 0x08  # the complex flag, with no imaginary part after the real one
    for name, data, message in (("type.mat", bad_type, "real part has element type 135"),
                                ("imaginary.mat", imaginary, "an element runs past its end")):
        path = tmp_path / name
        path.write_bytes(bytes(data))
        proc = subprocess.run([sys.executable, "-m", "vdsr", "convert", str(path), "-o",
                               str(tmp_path / "o.safetensors")], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1 and proc.stderr == (
            f"vdsr: error: {path}: not a MAT file of numbers, cells and structs ({message})\n"), (
            proc.returncode, proc.stderr[-300:])


# -- vdsr convert ----------------------------------------------------------------------------------

def test_convert_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, data in (("zero.mat", b""), ("junk.mat", b"junk" * 100), ("junk.pth", b"junk" * 100),
                       ("x.onnx", b"x")):
        src = tmp_path / name
        src.write_bytes(data)
        code = main(["convert", str(src), "-o", str(tmp_path / "o.safetensors")])
        check_one_line_error(capsys, code, name)
    code = main(["convert", str(tmp_path / "nope.mat"), "-o", str(tmp_path / "o.safetensors")])
    check_one_line_error(capsys, code, "nope.mat", "no such")
    assert not (tmp_path / "o.safetensors").exists()


def test_training_checkpoint_advice_works(tmp_path: Path, tiny_weights: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Bug 5: ``--weights checkpoint.pt`` advised ``vdsr convert … checkpoint.pt``, which refused it."""
    from safetensors.torch import load_file

    from vdsr.weights import read_metadata

    hr = tmp_path / "hr"
    hr.mkdir()
    for i in range(2):
        write_png(hr / f"{i}.png", random_rgb(48, 48, seed=i))
    run_dir = tmp_path / "run"
    code, _, err = run(["train", "--run-dir", str(run_dir), "--train-dirs", str(hr), "--val-dir", "none",
                        "--depth", "4", "--width", "8", "--batch-size", "4", "--steps", "3", "--patch", "21",
                        "--downscales", "1.0", "--checkpoint-every", "3", "--threads", "1", "--scales", "2", "3"],
                       capsys)
    assert code == 0, err
    checkpoint = run_dir / "checkpoint.pt"
    src = write_png(tmp_path / "a.png", random_rgb(10, 10))
    code, _, err = run(["upscale", str(src), "-s", "2", "-o", str(tmp_path / "o.png"), "--weights", str(checkpoint)],
                       capsys)
    assert code == 1
    advice = err.split("`")[1]  # the command the error line suggests
    assert advice.startswith("vdsr convert ")
    converted = tmp_path / "checkpoint.safetensors"
    code, out, err = run(advice.split()[1:-1] + [str(converted)], capsys)
    assert code == 0, err
    meta = read_metadata(converted)
    assert (meta.config.depth, meta.config.width, meta.scales) == (4, 8, [2, 3])
    assert "step 3" in meta.source
    last = load_file(str(run_dir / "last.safetensors"))  # the same step's model
    got = load_file(str(converted))
    assert got.keys() == last.keys() and all(bool((got[k] == last[k]).all()) for k in got)
    code, _, err = run(["upscale", str(src), "-s", "2", "-o", str(tmp_path / "o.png"), "--weights", str(converted)],
                       capsys)
    assert code == 0, err
