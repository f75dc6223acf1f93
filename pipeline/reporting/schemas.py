"""Schemas of the results files the report stage reads, validated when they are loaded.

Each model names only the keys the report (tables, figures, claims) reads; the files hold more
(``extra="allow"``). A file that lacks a key or holds a wrong type fails on load with the file, the key path
and the stage that writes it, instead of a ``KeyError`` deep inside a table.

``load_results`` validates every file, then hands the report the parsed JSON: the table and claim code reads
the validated structure, so the keys it reads are guaranteed to be there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Stat(_Open):
    """``{"mean", "std", "per_seed"}`` over seeds (``table_writer.mean_std``); None where not measured."""

    mean: float | None = None
    std: float | None = None
    per_seed: list[float | None] = []


class TrainCell(_Open):
    """``results/train/<cell>.json`` of a trained cell (stage train)."""

    cell: str
    trained: bool
    model: str
    dataset: str
    symmetry: str
    seeds: list[int]
    #: split -> metric (``energy_mae``, ``force_mae``, ``energy_ewt``, ``<property>_mae``) -> stats over seeds
    splits: dict[str, dict[str, Stat]] = {}
    epoch_seconds_mean: float | None = None
    rewiring: str | None = None
    mlflow_run_ids: list[str] = []
    targets: list[str] = []


class _Inference(_Open):
    samples_per_s: float


class _Measurement(_Open):
    id: str
    inference: _Inference | None = None


#: hparam set -> pair -> quantity -> (per protocol ratios, or a plain value such as ``n_frames``)
_Ratios = dict[str, dict[str, dict[str, Any]]]


class _SpeedTarget(_Open):
    name: str
    regime: str = "main"
    value: float | None = None
    threshold: float
    passed: bool | None = None
    what: str = ""


class Benchmark(_Open):
    """``results/benchmark.json`` (stage benchmark, documented in ``pipeline/benchmark.py``): measurements and
    the ratios the speed claims and the headline read."""

    profile: str | None = None
    hparam_sets: list[str]
    measurements: list[_Measurement]
    #: protocol (``same_graph_full``, ...) -> hparam set -> ``model/symmetry`` -> measurement id
    protocols: dict[str, dict[str, Any]]
    ratios: _Ratios = {}
    s2ef: _Ratios = {}
    symmetry_costs: _Ratios = {}
    speed_targets: list[_SpeedTarget] = []


#: A graph subset's metrics: ``n_graphs`` (int), then metric -> stats over seeds (module ``Symmetry``).
_SymmetrySplit = dict[str, Stat | float | None]


class _SymmetryRow(_Open):
    """One evaluated row of Table 11/12 (a trained cell, or No-Train): metric stats per graph subset."""

    row: str = ""  # paper row key, "<model>-<symmetry>" / "faenet-notrain"
    label: str = ""  # the paper's row name ("Full FA", "No-FA", ...)
    model: str = ""
    symmetry: str = ""  # symmetry method of the wrapper ("none" for No-Train)
    trained: bool = True
    frame_dim: int | None = None  # 2 (slabs) or 3
    rewiring: str = "none"
    seeds: list[int] = []
    n_graphs: int | None = None
    n_degenerate: int | None = None
    all: _SymmetrySplit  # every evaluated graph
    degenerate: _SymmetrySplit = {}  # graphs whose PCA frames are degenerate
    non_degenerate: _SymmetrySplit = {}
    mae_meV: Stat | None = None  # = all.mae_meV: energy MAE of the reference predictions E(x)
    #: trained FA cells matching ``symmetry.wrap_i.cells`` only: frame construction (pca, lattice, edges) ->
    #: ``wrap_i_offsets`` / ``wrap_i_translate`` / ``mae_meV`` (stats over seeds), ``n_graphs``, ``n_degenerate``
    wrap_i: dict[str, dict[str, Stat | float | None]] = {}
    mae_meV_train_val_id: Stat | None = None  # the train stage's energy MAE on the whole val_id (meV)
    mlflow_run_ids: list[str | None] = []  # this stage's runs, one per seed (seed order; None: not logged)
    train_mlflow_run_ids: list[str] = []  # the train stage's runs ([] for No-Train)
    checkpoints: list[str] = []  # relative paths ([] for No-Train)


class _SymmetryConfig(_Open):
    """``profiles.<p>.symmetry`` as validated, plus what the stage derived from the data and the profile."""

    datasets: list[str] = []
    split: dict[str, str] = {}  # task -> evaluated split ("val_id")
    split_size: dict[str, int | None] = {}  # task -> graphs in that split
    frame_dim: dict[str, int] = {}
    seeds: list[int] = []  # the training seeds
    excluded_cells: list[str] = []  # trained cells matching symmetry.exclude (not evaluated)


class Symmetry(_Open):
    """``results/symmetry.json`` (stage symmetry, ``pipeline.reporting.symmetry`` builds it): task (is2re, s2ef,
    qm7x) -> row (cell name ``<model>-<task>-<symmetry>``, or ``faenet-<task>-notrain``). The report reads the
    rows' ``all`` and ``non_degenerate``; every other key is optional here and type-checked when present.

    Metrics of a graph subset (``all`` | ``degenerate`` | ``non_degenerate``), each ``{"mean", "std",
    "per_seed"}``: ``pos``, ``pos_refl``, ``pos_frac``, ``rot_i``, ``refl_i``, ``pct_diff``, ``mae_meV``; force
    tasks add ``f_rot_e``, ``f_refl_e``, ``force_mae_meV_per_A`` (units in ``units``). Definitions
    (``faenet/symmetry_metrics.py``): Rot-I / Refl-I = mean |E(x) - E(g x)| over (graph, transform) pairs;
    %-diff = 100 mean |E(x) - E(R x)| / |y|; F-Rot-E / F-Refl-E = mean over atoms of the L2 norm of F(x) Q -
    F(g x); ``pos_frac`` = fraction of (graph, rotation) pairs whose backbone input changed (the paper's binary
    Pos, measured); ``pos`` = mean per-atom distance (Å) between the backbone inputs for x and R x, each
    centred (frame sets compared for full FA); ``pos_refl`` the same for reflections. Std: sample std over
    seeds (0 for one seed). ``null``: not computable (e.g. no degenerate graph).
    """

    schema_: str = Field("faenet-repro/symmetry/v1", alias="schema")  # ``pipeline.reporting.symmetry.SCHEMA``
    profile: str | None = None
    params_hash: str | None = None
    config: _SymmetryConfig = _SymmetryConfig()
    units: dict[str, str] = {}  # metric -> unit (meV, meV/Å, %, Å, fraction)
    is2re: dict[str, _SymmetryRow] = {}
    s2ef: dict[str, _SymmetryRow] = {}
    qm7x: dict[str, _SymmetryRow] = {}


class _AblationVariant(_Open):
    mae_mev: dict[str, Stat]  # val split | "average" -> energy MAE (meV) over seeds
    throughput: _Inference


class Ablation(_Open):
    """``results/ablation.json`` (stage ablation; its keys: ``pipeline/reporting/ablation.py``): Table 6
    variants by name, the rows run in Table 6 order, the baseline row and the rankings."""

    variants: dict[str, _AblationVariant]
    profile: str | None = None
    order: list[str] = []
    baseline: str | None = None
    #: ours | paper -> mae | throughput -> rows, best first
    rankings: dict[str, dict[str, list[str]]] = {}
    best_mae: dict[str, str | None] = {}
    fastest: dict[str, str | None] = {}


class _ExpressivityEntry(_Open):
    paper: Stat | None = None
    strict: Stat | None = None


class Expressivity(_Open):
    """``results/expressivity.json`` (stage expressivity): table -> model -> experiment key -> protocols."""

    table3: dict[str, dict[str, _ExpressivityEntry]] = {}
    table4: dict[str, dict[str, _ExpressivityEntry]] = {}
    table5: dict[str, dict[str, _ExpressivityEntry]] = {}


class Fetch(_Open):
    """``results/fetch.json`` (stage fetch): the dataset hashes provenance records."""

    content_hashes: dict[str, Any] = {}


class _ScalingCell(_Open):
    task: str
    train_sizes: dict[str, int]  # fraction (as written, e.g. "0.25") -> training graphs
    #: fraction -> split -> metric -> per-seed values (seeds in ``seeds`` order)
    by_fraction: dict[str, dict[str, dict[str, list[float]]]]
    seeds: list[int]


class Scaling(_Open):
    """``results/scaling.json`` (stage scaling): each cell's errors at fractions of its training set."""

    fractions: list[float]
    cells: dict[str, _ScalingCell]


class _ContinuityCell(_Open):
    periodic: bool
    eigengap: list[float]
    crossing_index: int
    max_jump_per_A: dict[str, float]
    excess_jump: dict[str, float]
    jump_ratio: dict[str, float]


class Continuity(_Open):
    """``results/continuity.json`` (stage continuity, beyond the paper): FA predictions through a degenerate
    PCA spectrum, per cell."""

    cells: dict[str, _ContinuityCell]


#: Optional stage outputs: file name -> (schema, stage that writes it).
STAGE_FILES: dict[str, tuple[type[BaseModel], str]] = {
    "fetch": (Fetch, "fetch"), "benchmark": (Benchmark, "benchmark"), "symmetry": (Symmetry, "symmetry"),
    "expressivity": (Expressivity, "expressivity"), "ablation": (Ablation, "ablation"),
    "scaling": (Scaling, "scaling"), "continuity": (Continuity, "continuity"),
}


class ResultsSchemaError(ValueError):
    """A results file does not hold what the report reads."""


def validate(path: Path, data: Any, schema: type[BaseModel], stage: str) -> None:
    """Raise ``ResultsSchemaError`` naming ``path``, the first bad key path and the stage to rerun."""
    try:
        schema.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "<top level>"
        raise ResultsSchemaError(
            f"{path}: key {key!r}: {first['msg']} ({err.error_count()} problem(s) in all). The report reads it "
            f"as {schema.__name__}; rerun the stage that writes it (`dvc repro {stage}`)") from None


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ResultsSchemaError(f"{path}: not valid JSON ({err})") from None


def load_results(results_dir: Path) -> dict[str, Any]:
    """Every results file the report reads, validated; trained cells only under ``train`` (by cell name).
    Absent stage outputs are None (their claims: not measurable)."""
    train = {}
    for p in sorted((results_dir / "train").glob("*.json")):
        m = _read(p)
        if isinstance(m, dict) and m.get("trained"):  # untrained cells (profile skips) hold no metrics
            validate(p, m, TrainCell, "train")
            train[m["cell"]] = m
    out: dict[str, Any] = {"train": train}
    for name, (schema, stage) in STAGE_FILES.items():
        p = results_dir / f"{name}.json"
        out[name] = None
        if p.exists():
            out[name] = _read(p)
            validate(p, out[name], schema, stage)
    return out
