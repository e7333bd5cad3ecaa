"""VDM's data grid for the discrete Gaussian bound: values 2(u + 0.5)/256 - 1."""

from __future__ import annotations

import math

import pytest
import torch
from test_nll import tiny_runs  # noqa: F401 - the trained tiny runs of test_nll

from diffobj.errors import UserError
from diffobj.metrics import nll

U8 = torch.tensor([[0, 1, 127, 128, 200, 255]])


def test_grids_are_edms_and_vdms():
    torch.testing.assert_close(nll.grid_values("edm")[U8], U8.double() / 127.5 - 1)
    torch.testing.assert_close(nll.grid_values("vdm")[U8], 2 * (U8.double() + 0.5) / 256 - 1)


@pytest.mark.parametrize("grid", ["edm", "vdm"])
def test_a_sharp_decoder_costs_nothing_on_its_own_grid(grid):
    """At lam_max = 25 the decoder's noise (3.7e-6) is far below the grid step (7.8e-3)."""
    x = nll.grid_values(grid)[U8].float()
    rec = nll.discrete_reconstruction(x, 25.0, 4, torch.Generator().manual_seed(0), grid)
    assert rec.abs().max() < 1e-6


def test_data_off_the_grid_is_refused():
    with pytest.raises(UserError, match=r"2\(u8 \+ 0.5\)/256 - 1"):
        nll.discrete_reconstruction(nll.grid_values("edm")[U8].float(), 10.0, 1, None, "vdm")


def test_reconstruction_on_the_vdm_grid_by_brute_force():
    """-log softmax_k(-e^lam (x^ - v_k)^2 / 2) at the drawn x^ = x + e^{-lam/2} n, v_k VDM's."""
    lam = 11.0
    x = nll.grid_values("vdm")[U8]
    rec = nll.discrete_reconstruction(x.float(), lam, 1, torch.Generator().manual_seed(3), "vdm")
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x_hat = x + math.exp(-lam / 2) * noise
    v = (torch.arange(256, dtype=torch.float64) + 0.5) / 128 - 1
    expected = 0.0
    for d in range(x.shape[1]):
        logits = [-0.5 * math.exp(lam) * (float(x_hat[0, d]) - float(vk)) ** 2 for vk in v]
        top = max(logits)
        log_z = top + math.log(sum(math.exp(lg - top) for lg in logits))
        expected -= logits[int(U8[0, d])] - log_z
    assert float(rec[0]) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert float(rec[0]) > 1e-3  # the decoder is not certain at this lam: the check has teeth


def _nll(run, data, out, *extra) -> int:
    from diffobj.cli import main

    args = ["nll", "--run", str(run), "--data", str(data), "--out", str(out), "--device", "cpu"]
    return main([*args, "--max-images", "8", "--quiet", *extra])


def test_cli_vdm_grid(tiny_runs, tmp_path):  # noqa: F811
    import json

    root, runs = tiny_runs
    data = root / "data" / "test" / "images.npy"
    assert _nll(runs["gaussian"], data, tmp_path / "vdm.json", "--grid", "vdm") == 0
    result = json.loads((tmp_path / "vdm.json").read_text())
    assert "2(u8 + 0.5)/256 - 1 (VDM's)" in result["convention"] and 0 < result["bpd"] < 40
    assert _nll(runs["masked"], data, tmp_path / "m.json", "--grid", "vdm") == 2
    assert not (tmp_path / "m.json").exists()
