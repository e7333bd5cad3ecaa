"""A run's resolved sampling (RUN_DIR/sampling.yaml): what ``diffobj sample`` draws, and how.

Written by the workflow from the spec's sampling section (``from_spec``, in sample.smk's local
rule ``sampling_config``), or built from the command's flags by hand (``requested``); both
become a ``SamplingConfig`` through ``parse``, and ``sample.sample_run`` checks the names and
options of either against the registries. Self-contained, like the run's config.yaml: a grid
named after a schedule stores that schedule's entry. E.g.

    sampler: heun
    steps: 18
    grid: {name: edm, sigma_min: 0.002, sigma_max: 80.0}
    options: {s_churn: 0.0, s_min: 0.0, s_max: null, s_noise: 1.0}
    num: 1000
    seed: 0
    guidance: 0.0
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from diffobj.errors import UserError
from diffobj.io import read_yaml
from diffobj.objectives import schedules
from diffobj.sampling.samplers import GRIDS, SAMPLERS, SCHEDULE_GRID, grid_names


@dataclass(frozen=True)
class SamplingConfig:
    sampler: str
    steps: int
    grid: dict[str, Any]  # its name and options (the keywords of the grid function)
    options: dict[str, Any]  # the sampler's keywords
    num: int
    seed: int = 0
    guidance: float = 0.0  # classifier-free guidance scale of a class-conditional run


FIELDS = {f.name: f for f in fields(SamplingConfig)}
TYPES = {"sampler": str, "steps": int, "grid": dict, "options": dict, "num": int, "seed": int}
TYPES["guidance"] = (int, float)


def parse(raw: Any, source: str) -> SamplingConfig:
    """The sampling config of a mapping (the file's or the flags'), its keys and types checked."""
    if not isinstance(raw, Mapping):
        raise UserError(f"{source}: expected a mapping")
    unknown = sorted(set(raw) - set(FIELDS))
    missing = [k for k, f in FIELDS.items() if k not in raw and f.default is MISSING]
    if unknown or missing:
        raise UserError(
            f"{source}: unknown key {unknown[0]!r}"
            if unknown
            else f"{source}: missing key {missing[0]!r}"
        )
    for key, value in raw.items():
        want = TYPES[key]
        if isinstance(value, bool) or not isinstance(value, want):
            raise UserError(
                f"{source}: {key}: expected {getattr(want, '__name__', 'a number')}, got {value!r}"
            )
    if not isinstance(raw["grid"].get("name"), str):
        raise UserError(f"{source}: grid: expected its name, got {raw['grid']!r}")
    return SamplingConfig(**raw)


def load_sampling_config(path: str | Path) -> SamplingConfig:
    return parse(read_yaml(Path(path), "sampling config"), str(path))


def dump_sampling_config(raw: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(raw), sort_keys=False)


def grid_entry(value: str, kind: str, schedule_entries: Mapping[str, Any], library: Any) -> dict:
    """A grid as the spec or ``--grid`` names it, as the file stores it: a registered grid, or a
    schedule's name (the ``schedule`` grid of that entry, for the processes it serves)."""
    if value in GRIDS and value != SCHEDULE_GRID:
        return {"name": value}
    if kind in GRIDS[SCHEDULE_GRID].kinds and value in schedule_entries:
        return {"name": SCHEDULE_GRID, "of": {"name": value, **schedule_entries[value]}}
    named = [g for g in grid_names(kind) if g != SCHEDULE_GRID]
    also = f" nor a schedule of {library}" if kind in GRIDS[SCHEDULE_GRID].kinds else ""
    raise UserError(f"{value!r} is neither {' nor '.join(named)}{also}")


def _spec_value(sampling: Any, kind: str, option: str, default: Any) -> Any:
    """An option's value in the spec's sampling section: its field ``<kind>_<option>`` or
    ``<option>`` if the section has one, else the function's default."""
    for field in (f"{kind}_{option}", option):
        if hasattr(sampling, field):
            return getattr(sampling, field)
    return default


def from_spec(
    sampling: Any,
    kind: str,
    seed: int,
    conditional: bool,
    schedule_entries: Mapping[str, Any],
    library: Path,
) -> dict[str, Any]:
    """The resolved sampling of a run of process ``kind`` from the spec's sampling section
    (``diffobj.spec.Sampling``): its sampler, steps and grid (the sampler's own unless the
    section has a field ``<kind>_grid``: masked_grid), every option of both (``_spec_value``), and the guidance of a
    class-conditional run (0 for the others)."""
    entry = SAMPLERS[getattr(sampling, f"{kind}_sampler")]
    grid = grid_entry(
        getattr(sampling, f"{kind}_grid", None) or entry.grid, kind, schedule_entries, library
    )
    for option, default in GRIDS[grid["name"]].defaults.items():
        grid.setdefault(option, _spec_value(sampling, kind, option, default))
    options = {o: _spec_value(sampling, kind, o, d) for o, d in entry.defaults.items()}
    return {
        "sampler": entry.name,
        "steps": getattr(sampling, f"{kind}_steps"),
        "grid": grid,
        "options": options,
        "num": sampling.num,
        "seed": seed,
        "guidance": sampling.guidance if conditional else 0.0,
    }


def requested(
    sampler: str,
    steps: int,
    num: int,
    *,
    grid: str | None = None,
    schedules_library: str | Path | None = None,
    seed: int = 0,
    guidance: float = 0.0,
    **options: Any,
) -> SamplingConfig:
    """A sampling asked for by hand (``diffobj sample``'s flags): ``grid`` None is the
    sampler's own, a name not registered is a schedule of ``schedules_library``; ``options``
    (those set) go to the grid that takes them, the others to the sampler."""
    entry = SAMPLERS[sampler]
    library = Path(schedules_library or schedules.DEFAULT_LIBRARY)
    named = grid or entry.grid
    entries = {} if named in GRIDS else schedules.load_library(library)
    try:
        chosen = grid_entry(named, entry.kind, entries, library)
    except UserError as err:
        raise UserError(f"--grid: {err}") from None
    takes = GRIDS[chosen["name"]].options
    chosen |= {k: v for k, v in options.items() if k in takes}
    raw = {
        "sampler": sampler,
        "steps": steps,
        "grid": chosen,
        "options": {k: v for k, v in options.items() if k not in takes},
        "num": num,
        "seed": seed,
        "guidance": float(guidance),
    }
    return parse(raw, "diffobj sample")
