"""No process-wide state left changed by library code (issue 32): warnings filters and Pillow's
limits after concurrent decodes in threads (as the web app decodes), signal handlers around
training, and weights summaries that speak no command-line words."""

from __future__ import annotations

import io
import signal
import threading
import warnings
from pathlib import Path

from PIL import Image

from tests.conftest import random_rgb
from vdsr.io.images import decode_image, probe_image
from vdsr.quiet import catch_warnings


def _animated_gif() -> bytes:
    frames = [Image.fromarray(random_rgb(24, 20, seed=s)) for s in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    return buf.getvalue()


def test_concurrent_decodes_leave_the_warnings_filters_and_pillows_limit_as_they_were() -> None:
    """Eight threads decode an animated GIF (which warns) 25 times each, inside the web app's
    "ignore" block, as its worker threads do. warnings.catch_warnings is not thread-safe: each
    block puts back the filter list it saw on entry, so interleaved blocks left an "ignore"
    filter behind for the whole process (or took a caller's filter away). Through
    vdsr.quiet.catch_warnings the filters and Image.MAX_IMAGE_PIXELS end as they began."""
    data = _animated_gif()
    warnings.simplefilter("default")  # a caller's own filter, which must survive
    before_filters, before_limit = list(warnings.filters), Image.MAX_IMAGE_PIXELS
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work() -> None:
        try:
            start.wait()
            for _ in range(25):
                with catch_warnings():
                    warnings.simplefilter("ignore")
                    image = decode_image(data, "anim.gif", max_pixels=10_000)
                    assert probe_image(data, "anim.gif", max_pixels=10_000) == (24, 20)
                assert image.raw.shape[:2] == (24, 20)
        except BaseException as exc:  # noqa: BLE001 - reported below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert warnings.filters == before_filters
    assert Image.MAX_IMAGE_PIXELS == before_limit
    # and a decode outside such a block still says what it does
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        decode_image(data, "anim.gif", max_pixels=10_000)
    assert any("animated image" in str(w.message) for w in said)


def test_training_can_leave_the_signal_handlers_alone(tmp_path: Path) -> None:
    """Trainer.fit installs SIGINT/SIGTERM handlers while it runs (a stop at a step boundary);
    stop_on_signals=False leaves a host program's own handlers in place, and either way the
    handlers are the caller's again after fit."""
    from vdsr.train import TrainConfig, Trainer

    folder = tmp_path / "hr"
    folder.mkdir()
    Image.fromarray(random_rgb(48, 48, seed=1)).save(folder / "a.png")

    def ours(signum: int, frame: object) -> None: ...

    old = signal.signal(signal.SIGTERM, ours)
    try:
        for stop_on_signals in (True, False):
            seen: list[object] = []
            config = TrainConfig(run_dir=str(tmp_path / f"run{stop_on_signals}"), train_dirs=[str(folder)],
                                 val_dir=None, scales=[2], downscales=[1.0], depth=3, width=4, batch_size=2,
                                 patch=21, steps=2, log_every=1, checkpoint_every=2, device="cpu", precision="fp32")
            trainer = Trainer(config, stop_on_signals=stop_on_signals,
                              progress=lambda step, row, seen=seen: seen.append(signal.getsignal(signal.SIGTERM)))
            trainer.fit()
            assert seen and all((h is ours) is (not stop_on_signals) for h in seen), (stop_on_signals, seen)
            assert signal.getsignal(signal.SIGTERM) is ours
    finally:
        signal.signal(signal.SIGTERM, old)


def test_a_weights_summary_speaks_no_command_line_words(tmp_path: Path) -> None:
    """weights.describe is library text (the CLI adds its own hint about `vdsr info --json`)."""
    from vdsr.weights import default_weights_path, describe, read_metadata, weights_summary

    path = default_weights_path()
    text = describe(path, weights_summary(read_metadata(path)))
    assert "vdsr info" not in text and "--json" not in text and text.startswith(path.name)
