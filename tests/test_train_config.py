"""vdsr.train.config: TrainConfig, its checks field by field, and the learning-rate schedules it
defines."""

from __future__ import annotations

import pytest

from vdsr.train import TrainConfig
from vdsr.train.config import learning_rate_factor


def test_lr_schedules() -> None:
    c = TrainConfig(steps=100, schedule="step", decay_steps=40, val_dir=None)
    assert [learning_rate_factor(c, s) for s in (0, 39, 40, 80)] == pytest.approx([1, 1, 0.1, 0.01])
    c = TrainConfig(steps=100, schedule="exponential", decay_steps=50, val_dir=None)
    assert learning_rate_factor(c, 50) == pytest.approx(0.1) and learning_rate_factor(c, 25) == pytest.approx(0.1**0.5)
    c = TrainConfig(steps=100, schedule="cosine", warmup_steps=10, val_dir=None)
    assert learning_rate_factor(c, 0) == pytest.approx(0.1) and learning_rate_factor(c, 9) == pytest.approx(1.0)
    assert learning_rate_factor(c, 55) == pytest.approx(0.5) and learning_rate_factor(c, 100) == pytest.approx(0.0)


def test_train_config_refuses_wrong_types_and_values_with_the_field_names() -> None:
    """Issue 23, item 11 (library side): wrong types gave TypeError/ValueError from deep inside;
    now one InvalidTrainConfig lists every field that is wrong."""
    from vdsr.errors import InvalidTrainConfig

    with pytest.raises(InvalidTrainConfig) as info:
        TrainConfig(depth="4", steps="many", bias=1, val_dir=None)  # type: ignore[arg-type]
    assert list(info.value.problems) == ["depth", "bias", "steps"]  # in the order of the fields
    assert "depth must be an integer, got '4'" in str(info.value)
    with pytest.raises(InvalidTrainConfig) as info:
        TrainConfig(scales=[], downscales=[0.0], batch_size=0, val_dir=None)
    assert list(info.value.problems) == ["scales", "downscales", "batch_size"]
    with pytest.raises(InvalidTrainConfig, match="patch size 5 is too small for scale 4"):
        TrainConfig(patch=5, val_dir=None)
    # what JSON and people write for numbers is taken as the field keeps it
    config = TrainConfig(learning_rate=1, scales=(2, 3), val_dir="none")  # type: ignore[arg-type]
    assert config.learning_rate == 1.0 and isinstance(config.learning_rate, float)
    assert config.scales == [2, 3] and config.val_dir is None
