"""diffobj.devices.resolve_device: the one reader of --device (train, optimal-loss, fid, features)."""

from __future__ import annotations

import pytest
import torch

from diffobj.devices import resolve_device
from diffobj.errors import UserError


def test_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None, local_rank=None) == torch.device("cpu")
    assert resolve_device("cpu", 3) == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    for name in ("cuda", "cuda:1", torch.device("cuda")):
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device(name)


def test_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto", 2) == torch.device("cuda", 2)  # a DDP process's own GPU
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("auto", local_rank=None) == torch.device("cuda")  # no index
    assert resolve_device("cuda", local_rank=None) == torch.device("cuda")
    assert resolve_device("cuda:1", 0) == torch.device("cuda", 1)  # an explicit index stands
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu", "meta", "cuda:x", ""])
def test_anything_else_is_a_user_error(name):
    with pytest.raises(UserError, match="--device must be auto, cpu, cuda or cuda:N"):
        resolve_device(name)
