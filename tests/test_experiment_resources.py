"""Every experiment spec on a paper dataset asks `--profile slurm` for what its jobs need.

Without a `resources:` block a stage goes out with the CPU defaults (no GPU, 60 min, 8 GB), so a
paper spec's training, sampling, FID and NLL would run on CPUs or be killed for memory. The
needs are sized from the data: the released training sets' image counts and shapes (below, as
the loaders read them), how many copies of ``images.npy`` each stage holds, and a fixed
allowance per process for torch, CUDA and batches.
"""

from functools import cache
from pathlib import Path

import pytest
import yaml

from diffobj import spec

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "config" / "experiments").glob("*.yaml"))

# (images, H, W, C) of the released training sets: CIFAR-10's 5 python batches of 10,000 and
# the downsampled ImageNet 64x64's 10 train_data_batch files
TRAIN_SETS = {"cifar10": (50_000, 32, 32, 3), "imagenet64": (1_281_167, 64, 64, 3)}
PROCESS_MB = 8000  # one process: torch, the CUDA context, batches in flight
# copies of images.npy a stage holds at its peak: preparing decodes the batches and stacks
# them (the issue-24 rehearsal measured ~31 GB for ImageNet-64's 15 GiB); training maps
# images.npy (its page cache, one copy per node however many ranks: measured by
# benchmarks/load_data_memory.py); FID's reference statistics read the images once
COPIES = {"prepare_data": 2, "train": 1, "fid": 1}
INCEPTION_IMAGES_PER_S = 500  # a conservative rate for Inception-v3 at 299x299 on one GPU


def data_mb(source: str) -> float:
    n, h, w, c = TRAIN_SETS[source]
    return n * h * w * c / 2**20


@cache
def validated(path: Path) -> spec.Spec:
    """The spec's own keys, validated (the libraries it names are not needed here)."""
    return spec.Spec.model_validate(yaml.safe_load(path.read_text()))


def paper_specs() -> list[Path]:
    return [p for p in EXPERIMENTS if paper_sources(validated(p))]


def paper_sources(s: spec.Spec) -> list[str]:
    return [d.source for d in s.datasets.values() if d.source in TRAIN_SETS]


def gpu_stages(s: spec.Spec) -> list[str]:
    """The stages that run a paper-sized network (or Inception) over a paper dataset."""
    stages = ["train", "sample"]
    stages += ["nll"] if s.evaluation.nll else []
    stages += ["fid"] if s.evaluation.fid else []
    stages += ["optimal_loss"] if s.optimal_loss.enabled else []
    return stages


def test_the_paper_specs_are_found():
    names = {p.stem for p in paper_specs()}
    expected = {"edm_cifar10", "md4_cifar10", "st_imagenet64", "scaling_imagenet64"}
    assert expected | {"cifar10_weighting_study", "optimal_loss_schedule_cifar10"} == names


@pytest.mark.parametrize("path", paper_specs(), ids=lambda p: p.stem)
def test_a_paper_spec_asks_for_gpus_memory_and_walltime_that_fit_its_data(path):
    s = validated(path)
    need_mb = max(data_mb(source) for source in paper_sources(s))
    for stage in gpu_stages(s):
        got = getattr(s.resources, stage)
        assert got.gpus >= 1, f"{path.name}: resources.{stage}.gpus = {got.gpus}"
    for stage, copies in COPIES.items():
        if stage == "fid" and not s.evaluation.fid:
            continue
        got = getattr(s.resources, stage)
        processes = max(got.gpus, 1)  # DDP: one process per GPU, the data shared on the node
        want = copies * need_mb + PROCESS_MB * processes
        assert got.mem_mb >= want, (
            f"{path.name}: resources.{stage}.mem_mb = {got.mem_mb}, its data need {want:.0f}"
        )
    if s.evaluation.fid:
        images = max(TRAIN_SETS[src][0] for src in paper_sources(s)) + s.sampling.num
        minutes = images / INCEPTION_IMAGES_PER_S / 60
        got = s.resources.fid.runtime
        assert got >= minutes, f"{path.name}: resources.fid.runtime = {got} < {minutes:.0f} min"
