"""The seed mixers of diffobj.seeds, stated in closed form over numpy's SeedSequence words."""

from __future__ import annotations

import numpy as np
import pytest

from diffobj.seeds import step_seed, xor_pair_seed

KEYS = [(0,), (0, 1), (7, 3), (5, 0, 3, 2), (123456789, 0, 10_000, 4), (2**40, 3)]


def words(*keys: int) -> tuple[int, int]:
    """The first two 32-bit words of SeedSequence(keys)."""
    w0, w1 = np.random.SeedSequence(list(keys)).generate_state(2, np.uint32)
    return int(w0), int(w1)


@pytest.mark.parametrize("keys", KEYS)
def test_step_seed_is_the_first_64_bit_word_shifted_right_by_one(keys):
    w0, w1 = words(*keys)
    assert step_seed(*keys) == ((w1 << 32) | w0) >> 1 == (w1 << 31) | (w0 >> 1)


@pytest.mark.parametrize("keys", KEYS)
def test_xor_pair_seed_is_the_first_word_shifted_xor_the_second(keys):
    w0, w1 = words(*keys)
    assert xor_pair_seed(*keys) == (w0 << 31) ^ w1


@pytest.mark.parametrize("keys", KEYS)
def test_both_are_63_bit_seeds_and_differ(keys):
    a, b = step_seed(*keys), xor_pair_seed(*keys)
    assert 0 <= a < 2**63 and 0 <= b < 2**63
    assert a != b


def test_pinned_values():
    """Values the two mixers gave before they moved to one module (step_seed in seeds.py,
    xor_pair_seed as optimal.derive_seed)."""
    assert step_seed(0) == 7896617691693857887
    assert step_seed(5, 0, 3, 2) == 1383580117821866830
    assert xor_pair_seed(0, 1) == 8514611595815388268
    assert xor_pair_seed(123456789, 7) == 2648597327451597574
