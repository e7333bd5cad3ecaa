"""Learning-rate schedules against their closed forms."""

from __future__ import annotations

import math

import pytest

from diffobj.training.lr import lr_at


def test_warmup_then_constant_is_edms_ramp():
    training = {"lr": 1e-3, "warmup_steps": 100, "steps": 1000}
    assert lr_at(training, 0) == pytest.approx(1e-5)
    assert lr_at(training, 49) == pytest.approx(5e-4)
    assert lr_at(training, 99) == lr_at(training, 999) == pytest.approx(1e-3)


def test_cosine_decay_is_md4s():
    """MD4: lr * min(1, step / warmup) * (1 + cos(pi (step - warmup) / (steps - warmup))) / 2."""
    training = {"lr": 2e-4, "warmup_steps": 100, "steps": 1100, "lr_decay": "cosine"}
    assert lr_at(training, 100) == pytest.approx(2e-4)
    assert lr_at(training, 600) == pytest.approx(1e-4)  # half way: cos(pi / 2) = 0
    assert lr_at(training, 350) == pytest.approx(2e-4 * (1 + math.cos(math.pi / 4)) / 2)
    assert lr_at(training, 1099) == pytest.approx(2e-4 * (1 + math.cos(math.pi * 0.999)) / 2)
    assert lr_at(training, 5000) == 0.0
