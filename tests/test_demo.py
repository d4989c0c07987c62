"""vdsr.demo: ``vdsr demo`` on the bundled photo: what its page says, where it writes."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_demo_output_folder_is_ignored_by_git() -> None:
    """Rough edge: ``vdsr demo`` writes ``vdsr-demo/`` (its default) in the checkout; git ignores it."""
    import subprocess

    from tests.conftest import ROOT

    proc = subprocess.run(["git", "check-ignore", "-q", "vdsr-demo/compare.png"], cwd=ROOT, timeout=30)
    assert proc.returncode == 0


def test_demo_title_has_no_internal_run_names(tmp_path: Path, tiny_weights: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Rough edge: the demo's title showed 'trained by `vdsr train` (run2), step 30000'."""
    import vdsr.demo

    titles: list[str] = []
    monkeypatch.setattr(vdsr.demo, "comparison", lambda *a, **k: titles.append(k["title"]))
    vdsr.demo.run_demo(tmp_path / "d", scale=3, weights=str(tiny_weights))
    assert titles == ["chelsea x3: Y-PSNR against the original; model: tiny.safetensors"]
