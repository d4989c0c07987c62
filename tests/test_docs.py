"""The documentation holds: README.md, BENCHMARKS.md, RELIABILITY.md and docs/*.md.

- Every fenced ``bash``/``sh`` and ``python`` block runs as written, page by page in order, in a
  temporary folder holding small sample images (``photo.jpg``, ``photos/``, ...): shell blocks
  with ``bash -e``, Python blocks in a subprocess. A block that cannot run in CI says why in an
  HTML comment on the line before it, ``<!-- not-run: reason -->``, and is reported as skipped
  with that reason; ``<!-- after-install: reason -->`` runs what follows the block's
  ``pip install ... &&`` (CI has installed the package already). ``<!-- known-bug: what -->``
  marks a documented command that fails today: it runs and is reported as an expected failure,
  and the test fails once it passes, so that the marker goes when the bug does.
- The ``vdsr`` command lines of every shell block, run or not, are parsed by vdsr's own parser,
  and every Python block compiles: a renamed flag or a bad value fails here.
- Every link to a local file resolves (and its ``#anchor`` names a heading there); every
  ``src/``, ``tests/``, ``benchmarks/``, ``scripts/`` or ``docs/`` path in inline code exists;
  every ``vdsr.…`` name in inline code imports; every test that RELIABILITY.md names exists.
- BENCHMARKS.md and docs/benchmark_history.md hold what the report scripts print for the JSON
  results in benchmarks/; the Table 3 results are the JSON results in docs/results and the paper's numbers in ``vdsr.evaluate``.
- README.md is at most 12 KB.

``vdsr`` and ``python FILE`` start from a fork server that has already imported torch and vdsr
(tests/docs_zygote.py), which keeps this file well under a minute. The commands run with
``VDSR_CPU_FEATURES=none`` (a CPU class without fast recipes), so that
``--precision auto`` takes fp32 at once instead of checking recipes for the shipped weights on
an empty cache (about 40 s on 2 cores); the choice itself is tested in tests/test_recipes.py.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT
from vdsr.cli import build_parser

PAGES = [ROOT / "README.md", ROOT / "BENCHMARKS.md", ROOT / "RELIABILITY.md",
         *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell"}
PYTHON = {"python", "py"}
MARKER = re.compile(r"<!--\s*(not-run|after-install|known-bug):\s*(.*?)\s*-->")
FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)\s*$")
README_LIMIT = 12 * 1024
# Names in inline code that are not Python: tensor names and the RGB ONNX file's metadata props.
NOT_PYTHON = {"vdsr.input", "vdsr.output", "vdsr.pipeline", "vdsr.scale", "vdsr.weights_source",
              "vdsr.input.weight", "vdsr.body"}
# Pages about the past: the files and names they quote may be gone (their links still resolve).
HISTORY = {"history.md", "benchmark_history.md", "openvino_signal_stack.md"}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    marker: str | None  # "not-run", "after-install" or "known-bug"
    reason: str

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def _blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, language, start = len(m.group(1)), m.group(2).lower(), i
        i += 1
        body = []
        while i < len(lines) and not FENCE.match(lines[i]):
            body.append(lines[i][indent:])
            i += 1
        i += 1  # the closing fence
        before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        mark = MARKER.search(before)
        kind = "shell" if language in SHELL else "python" if language in PYTHON else None
        if kind is not None:
            blocks.append(Block(page, start + 1, kind, "\n".join(body) + "\n",
                                mark.group(1) if mark else None, mark.group(2) if mark else ""))
    return blocks


BLOCKS = [block for page in PAGES for block in _blocks(page)]


def _text(page: Path) -> str:
    """The page without its fenced blocks (links and names in code blocks are not links)."""
    out, fenced = [], False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            out.append(line)
    return "\n".join(out)


# -- commands ---------------------------------------------------------------------------------------
def vdsr_command_lines(script: str) -> list[list[str]]:
    """The arguments of every ``vdsr ...`` (or ``python -m vdsr ...``, ``torchrun ... -m vdsr
    ...``) command in a shell script, without redirections."""
    commands = []
    for line in script.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        command: list[str] = []
        for token in [*tokens, ";"]:
            if token in ("&&", "||", ";", "|", "&"):
                commands.append(command)
                command = []
            else:
                command.append(token)
    found = []
    for command in commands:
        for k, token in enumerate(command):
            if re.match(r"^\d*[<>]", token):
                command = command[:k]
                break
        while command and re.match(r"^[A-Z_]+=", command[0]):
            command = command[1:]
        if command[:1] == ["vdsr"]:
            found.append(command[1:])
        elif "-m" in command and command[command.index("-m") + 1:][:1] == ["vdsr"]:
            found.append(command[command.index("-m") + 2:])
    return found


def check_parses(args: list[str]) -> None:
    """vdsr's parser accepts ``args`` (``--help`` included), or the test fails with its message."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            build_parser().parse_args(args)
    except SystemExit as e:
        if e.code not in (0, None):
            pytest.fail(f"`vdsr {shlex.join(args)}` does not parse: {err.getvalue().strip()}")


def test_the_command_line_check_can_fail() -> None:
    assert vdsr_command_lines("OUT=o vdsr info --json > x.json && python -m vdsr demo  # note\n"
                              "torchrun --standalone -m vdsr train \\\n  --steps 5 | tee log\n") == [
        ["info", "--json"], ["demo"], ["train", "--steps", "5"]]
    check_parses(["upscale", "photo.png", "-s", "2", "-o", "out.png"])
    with pytest.raises(pytest.fail.Exception, match="does not parse"):
        check_parses(["upscale", "photo.png", "-s", "2", "-o", "out.png", "--no-such-flag"])
    with pytest.raises(pytest.fail.Exception, match="does not parse"):
        check_parses(["upscale", "photo.png", "-s", "17", "-o", "out.png"])


# -- the workspace ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small pictures under the names the docs use (crops of scikit-image's bundled photos), and
    ``my.safetensors``, the shipped weights."""
    from skimage import data

    root = tmp_path_factory.mktemp("samples")
    cat, astronaut = data.chelsea(), data.astronaut()
    pictures = {"photo.jpg": cat[40:88, 100:164], "photo.png": cat[40:88, 100:164],
                "more.png": astronaut[60:100, 180:228], "scan.tif": cat[120:160, 200:240],
                "photos/a.jpg": cat[0:32, 0:40], "photos/b.png": astronaut[0:40, 0:32],
                "photos/trip/c.png": astronaut[200:232, 200:240], "shots/d.png": cat[200:232, 0:48]}
    for name, pixels in pictures.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(pixels)).save(root / name)
    (root / "my.safetensors").symlink_to(ROOT / "src" / "vdsr" / "weights" / "vdsr_x234.safetensors")
    return root


@pytest.fixture(scope="module")
def environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """``vdsr`` and ``python`` on PATH as this interpreter with this checkout's package first,
    started from a fork server that has done the imports (tests/docs_zygote.py)."""
    bin_dir = tmp_path_factory.mktemp("bin")
    env = dict(os.environ)
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH")])),
               VDSR_CPU_FEATURES="none", VDSR_CACHE_DIR=str(tmp_path_factory.mktemp("docs-cache")),
               MPLBACKEND="Agg")
    folder = tempfile.mkdtemp(prefix="vdsr-docs-")  # a short path: a socket's is at most 107 bytes
    sock, zygote, python = os.path.join(folder, "s"), ROOT / "tests" / "docs_zygote.py", sys.executable
    client = f'"{python}" -S "{zygote}" --client "{sock}"'
    shims = {"vdsr": f'exec {client} vdsr "$@"',
             "python": (f'if [ "$1" = -m ] && [ "$2" = vdsr ]; then shift 2; exec {client} vdsr "$@"; fi\n'
                        f'case "$1" in -*|"") exec "{python}" "$@";; esac\nexec {client} python "$@"')}
    shims["python3"] = shims["python"]
    for name, body in shims.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    server = subprocess.Popen([python, str(zygote), sock], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield env
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def workspaces(samples: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[Path, Path]:
    """One folder per page, made on first use: its blocks run in order, in the same folder."""
    base = tmp_path_factory.mktemp("pages")

    class Lazy(dict[Path, Path]):
        def __missing__(self, page: Path) -> Path:
            folder = base / page.relative_to(ROOT).as_posix().replace("/", "_")
            shutil.copytree(samples, folder, symlinks=True)
            self[page] = folder
            return folder

    return Lazy()


def _after_install(code: str) -> str:
    """``python3 -m venv .venv && . .venv/bin/activate && pip install ... && CMD`` -> ``CMD``."""
    parts = code.strip().split(" && ")
    last = max(i for i, part in enumerate(parts) if part.lstrip().startswith("pip install"))
    return " && ".join(parts[last + 1:]) + "\n"


@pytest.mark.subprocess
@pytest.mark.parametrize("block", BLOCKS, ids=[b.name for b in BLOCKS])
def test_documented_block_runs(block: Block, workspaces: dict[Path, Path], environment: dict[str, str]) -> None:
    if block.language == "shell":
        for args in vdsr_command_lines(block.code):
            check_parses(args)
    else:
        compile(block.code, block.name, "exec")
    if block.marker == "not-run":
        assert block.reason, f"{block.name}: say why it is not run"
        pytest.skip(f"not-run: {block.reason}")
    code = _after_install(block.code) if block.marker == "after-install" else block.code
    folder = workspaces[block.page]
    script = folder / f".block_{block.line}.{'sh' if block.language == 'shell' else 'py'}"
    script.write_text(code)
    python = environment["PATH"].split(os.pathsep)[0] + "/python"
    command = ["bash", "-e", str(script)] if block.language == "shell" else [python, str(script)]
    proc = subprocess.run(command, cwd=folder, env=environment, capture_output=True, text=True, timeout=120)
    if block.marker == "known-bug":
        if proc.returncode != 0:
            pytest.xfail(f"known-bug: {block.reason}: {proc.stderr.strip().splitlines()[-1:]}")
        pytest.fail(f"{block.name} passes now: remove its known-bug marker")
    assert proc.returncode == 0, f"{block.name} failed ({proc.returncode}):\n{code}\n{proc.stdout}\n{proc.stderr}"


def test_every_block_runs_or_says_why() -> None:
    """The count the skips report: most blocks run; those that do not all give a reason."""
    run = [b for b in BLOCKS if b.marker != "not-run"]
    assert all(b.reason for b in BLOCKS if b.marker), [b.name for b in BLOCKS if b.marker and not b.reason]
    assert len(run) >= 8, [b.name for b in run]
    assert any(b.page.name == "README.md" and b.language == "python" for b in run)


# -- links and names --------------------------------------------------------------------------------
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"`([^`\n]+)`")


def _slugs(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, -1 for repeats."""
    seen: dict[str, int] = {}
    for line in _text(page).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
            seen[slug] = seen.get(slug, -1) + 1
            if seen[slug]:
                seen[f"{slug}-{seen[slug]}"] = 0
    return set(seen)


def test_slugs_follow_github() -> None:
    page = ROOT / "BENCHMARKS.md"
    assert "collections-one-process-vs---workers-2-vs-ray" in _slugs(page)


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_local_links_resolve(page: Path) -> None:
    broken = []
    for target in LINK.findall(re.sub(r"`[^`\n]*`", "", _text(page))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in _slugs(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


def test_every_page_is_linked_from_another() -> None:
    """No page is an orphan: each docs page is reached by a link from another page."""
    linked = set()
    for page in PAGES:
        for target in LINK.findall(_text(page)):
            path = target.partition("#")[0]
            if path and not re.match(r"^[a-z][a-z0-9+.-]*:", path) and (page.parent / path).resolve() != page:
                linked.add((page.parent / path).resolve())
    assert not [p.name for p in PAGES if p.parent.name == "docs" and p not in linked]


def test_paths_and_names_in_inline_code_exist() -> None:
    missing = []
    for page in (p for p in PAGES if p.name not in HISTORY):
        for code in INLINE_CODE.findall(_text(page)):
            for path in re.findall(r"(?<![\w./-])((?:src/vdsr|tests|benchmarks|scripts|docs)/[\w./-]*\w)", code):
                if not (ROOT / path).exists():
                    missing.append(f"{page.name}: {path}")
            for name in re.findall(r"(?<![\w.])vdsr(?:\.[A-Za-z_]\w*)+", code):
                if name not in NOT_PYTHON and not _resolves(name):
                    missing.append(f"{page.name}: {name}")
    assert not missing, missing


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def test_the_tests_that_reliability_names_exist() -> None:
    defined = set()
    for file in (ROOT / "tests").glob("test_*.py"):
        defined |= set(re.findall(r"^(?:async )?def (test_\w+)", file.read_text(encoding="utf-8"), re.M))
    named = []
    for page in (ROOT / "RELIABILITY.md", ROOT / "docs" / "reliability_cases.md"):
        named += re.findall(r"`(test_\w+)", _text(page))
    assert len(named) >= 40
    assert not sorted(set(named) - defined)


def test_layout_names_every_module() -> None:
    """docs/layout.md names each module of the package, and nothing that is not one."""
    layout = (ROOT / "docs" / "layout.md").read_text(encoding="utf-8").split("```")[1]  # the package's block
    modules = {p.name for p in (ROOT / "src" / "vdsr").rglob("*.py") if not p.name.startswith("__")}
    named = set(re.findall(r"\b(\w+\.py)\b", layout))
    assert not modules - named, f"modules not in docs/layout.md: {sorted(modules - named)}"
    assert not named - modules, f"docs/layout.md names what is not a module: {sorted(named - modules)}"


def test_readme_is_a_front_door() -> None:
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes (at most {README_LIMIT})"


def test_the_bodies_table_gives_each_bodys_parameters() -> None:
    from vdsr.nn.model import VDSR, VDSRConfig

    rows = re.findall(r"^\| `(\w+)` \| [^|]+ \| ([\d,]+)", (ROOT / "docs" / "model.md").read_text(encoding="utf-8"), re.M)
    assert len(rows) == 4
    for body, count in rows:
        model = VDSR(VDSRConfig(body=body))
        assert sum(p.numel() for p in model.parameters()) == int(count.replace(",", "")), body


# -- numbers ----------------------------------------------------------------------------------------
TABLE3 = ("| set | scale | bicubic (ours) | bicubic (paper) | VDSR (paper) | official weights (ours) "
          "| shipped model (ours) |")


def _results(*names: str) -> dict[tuple[str, int], dict[str, float]]:
    rows = {}
    for name in names:
        for r in json.loads((ROOT / "docs" / "results" / f"{name}.json").read_text())["results"]:
            rows[(r["dataset"], r["scale"])] = r
    return rows


@pytest.mark.parametrize("page", ["README.md", "docs/protocol.md"])
def test_table3_is_the_measured_results_and_the_paper(page: str) -> None:
    from vdsr.evaluate import PAPER

    official = _results("official_rgb8", "official_urban100")
    shipped = _results("default_rgb8", "default_urban100")
    lines = (ROOT / page).read_text(encoding="utf-8").splitlines()
    start = lines.index(TABLE3) + 2
    checked = 0
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        key = (cells[0], int(cells[1].lstrip("×")))
        o, s, p = official[key], shipped[key], PAPER[key]
        assert cells[2:] == [f"{s['bicubic_psnr']:.2f}/{s['bicubic_ssim']:.4f}",
                             f"{p['bicubic'][0]:.2f}/{p['bicubic'][1]:.4f}",
                             f"{p['vdsr'][0]:.2f}/{p['vdsr'][1]:.4f}",
                             f"{o['psnr']:.2f}/{o['ssim']:.4f}",
                             f"{s['psnr']:.2f}/{s['ssim']:.4f}"], line
        checked += 1
    assert checked == 12


def _load(path: Path) -> object:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REPORTED = {"BENCHMARKS.md": ("results_cli", "results_first_run_issue30", "results_recipe_speed"),
            "docs/benchmark_history.md": ("results_cli_avx512_bf16", "results_first_run_avx512_bf16",
                                          "results_cli_session6", "results_cli_tile384",
                                          "results_cli_ort_tile384", "results", "results_int8")}


def test_benchmark_tables_are_what_the_reports_print() -> None:
    for page, names in REPORTED.items():
        text = (ROOT / page).read_text(encoding="utf-8")
        printed = []
        for name in names:
            out = io.StringIO()
            with contextlib.redirect_stdout(out), _argv("report.py", str(ROOT / "benchmarks" / f"{name}.json")):
                _load(ROOT / "benchmarks" / "report.py").main()  # type: ignore[attr-defined]
            printed.append(out.getvalue().strip())
        if page == "BENCHMARKS.md":
            printed.append(_load(ROOT / "benchmarks" / "collections_speed.py").report(  # type: ignore[attr-defined]
                ROOT / "benchmarks" / "results_collections.json").strip())
            printed.append(_load(ROOT / "benchmarks" / "train_cpu_precision.py").report(  # type: ignore[attr-defined]
                str(ROOT / "benchmarks" / "results_train_cpu.json")).strip())
            printed.append(_load(ROOT / "benchmarks" / "train_mini.py").report(  # type: ignore[attr-defined]
                ROOT / "benchmarks" / "results_train_mini.json").strip())
        for table in printed:
            assert table in text, f"{page}: {table[:300]}"


@contextlib.contextmanager
def _argv(*argv: str):  # type: ignore[no-untyped-def]
    saved = sys.argv
    sys.argv = list(argv)
    try:
        yield
    finally:
        sys.argv = saved
