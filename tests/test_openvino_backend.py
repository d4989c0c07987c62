"""The OpenVINO backend in a process that lives on: backends come and go, signals still work."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

needs_openvino = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None,
    reason="openvino is not installed (pip install 'vdsr[openvino]')")


@needs_openvino
@pytest.mark.subprocess
def test_signals_still_work_after_openvino_backends_are_freed_in_creation_order() -> None:
    """Each ``openvino.Core`` loads a CPU plugin that swaps the thread's signal stack and puts
    the previous one back when freed; two freed first-made-first (a backend rebuilt at each
    validation, a test's locals) left the thread on an unmapped signal stack, and the next
    SIGINT/SIGTERM killed the process with SIGSEGV and no traceback (issue 24; openvino
    2026.4.1, docs/openvino_signal_stack.md). A real signal, in a child process: the failure
    kills the process that receives it."""
    script = textwrap.dedent("""
        import gc, os, signal
        import torch
        from vdsr.backends import create_backend
        from vdsr.model import VDSR, VDSRConfig
        x = torch.rand(1, 1, 9, 9)
        first = create_backend(VDSR(VDSRConfig(depth=3, width=4)), "openvino", threads=1)
        second = create_backend(VDSR(VDSRConfig(depth=3, width=4)), "openvino", threads=1)
        first(x), second(x)
        del first
        gc.collect()
        del second
        gc.collect()
        heard = []
        signal.signal(signal.SIGINT, lambda signum, frame: heard.append(signum))
        os.kill(os.getpid(), signal.SIGINT)
        print("heard", heard)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    assert proc.stdout.strip() == "heard [2]", proc.stdout
