"""params.yaml -> a typed, validated config. The only reader of params.yaml.

Validation happens once, before any work: an unknown key, a wrong type or an impossible value fails at
once with a message naming the key path and what is allowed. Library code receives plain keyword
arguments taken from these models, never the config object itself.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ROOT = Path(__file__).resolve().parent.parent
PARAMS_PATH = ROOT / "params.yaml"

SYMMETRY_METHODS = ("none", "sfa", "full", "se3-sfa", "se3-full", "da")
DATASETS = ("is2re", "s2ef")
ELEMENTS_EMT = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt")
FACETS = ("111", "100", "110")

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Strict):
    """The catalysis data: embedded EMT set (``emt``) or the real OC20 LMDBs (``oc20``)."""

    source: Literal["emt", "oc20"] = "emt"
    seed: int = 0
    n_systems: PositiveInt = 200
    # Fractions of the in-distribution systems (the OOD splits are defined by held-out metals/adsorbates).
    val_id_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.15
    test_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1
    metals: list[Literal[ELEMENTS_EMT]] = Field(default_factory=lambda: list(ELEMENTS_EMT), min_length=2)
    ood_metals: list[Literal[ELEMENTS_EMT]] = Field(default_factory=lambda: ["Ag"])
    facets: list[Literal[FACETS]] = Field(default_factory=lambda: list(FACETS), min_length=1)
    adsorbates: list[str] = Field(default_factory=lambda: ["H", "O", "N", "C", "OH", "CO", "NO", "CH", "NH",
                                                            "CH2"], min_length=2)
    ood_adsorbates: list[str] = Field(default_factory=lambda: ["NO"])
    slab_size: tuple[PositiveInt, PositiveInt, Annotated[int, Field(ge=3)]] = (2, 2, 3)
    s2ef_frame_stride: PositiveInt = 2
    fmax: PositiveFloat = 0.05
    max_steps: PositiveInt = 200
    workers: PositiveInt = 2
    cutoff: PositiveFloat = 6.0
    max_num_neighbors: PositiveInt = 50
    # OC20 only: where the downloaded LMDBs live (relative to the repo root).
    oc20_dir: str = "data/oc20"
    oc20_is2re_size: Literal["10k", "100k", "all"] = "all"
    oc20_s2ef_size: Literal["200k", "2M", "20M", "all"] = "2M"

    @model_validator(mode="after")
    def _held_out_are_subsets(self) -> DataConfig:
        extra_m = set(self.ood_metals) - set(self.metals)
        if extra_m:
            raise ValueError(f"ood_metals {sorted(extra_m)} must also be listed in metals {self.metals}")
        if set(self.ood_metals) == set(self.metals):
            raise ValueError("ood_metals holds every metal: leave at least one in-distribution metal")
        extra_a = set(self.ood_adsorbates) - set(self.adsorbates)
        if extra_a:
            raise ValueError(f"ood_adsorbates {sorted(extra_a)} must also be listed in adsorbates {self.adsorbates}")
        if set(self.ood_adsorbates) == set(self.adsorbates):
            raise ValueError("ood_adsorbates holds every adsorbate: leave at least one in-distribution one")
        return self


class TaskTrainConfig(Strict):
    """Optimisation for one task (Table 7 rows: optimiser, scheduler, warm-up, lr, batch size, loss coeffs)."""

    epochs: PositiveInt = 10
    batch_size: PositiveInt = 16
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegFloat = 0.0
    scheduler: Literal["cosine", "plateau", "constant"] = "cosine"
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    warmup_factor: Annotated[float, Field(gt=0, le=1)] = 0.2
    plateau_factor: Annotated[float, Field(gt=0, lt=1)] = 0.9
    plateau_patience: Annotated[int, Field(ge=0)] = 5
    grad_clip: NonNegFloat = 10.0
    loss: Literal["mae", "mse"] = "mae"
    energy_coef: NonNegFloat = 1.0
    force_coef: NonNegFloat = 0.0
    energy_grad_coef: NonNegFloat = 0.0
    normalize_targets: bool = True
    regress_forces: Literal["", "direct", "from_energy", "direct_with_gradient_target"] = ""
    train_on_free_atoms: bool = True
    rewiring: Literal["none", "remove-tag-0"] = "none"


class TrainConfig(Strict):
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    eval_batch_size: PositiveInt = 64
    threads: PositiveInt = 2
    is2re: TaskTrainConfig = TaskTrainConfig()
    s2ef: TaskTrainConfig = TaskTrainConfig(force_coef=30.0, regress_forces="direct")
    # Which cells of the train matrix this profile trains: {model: {dataset: [symmetry methods]}}.
    runs: dict[str, dict[Literal[DATASETS], list[Literal[SYMMETRY_METHODS]]]] = Field(default_factory=dict)
    # Per-(model, task) overrides of the task settings, e.g. {"faenet": {"s2ef": {"rewiring": "remove-tag-0"}}}.
    overrides: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)

    def for_run(self, model: str, task: str) -> TaskTrainConfig:
        base: TaskTrainConfig = getattr(self, task)
        extra = self.overrides.get(model, {}).get(task, {})
        try:
            return TaskTrainConfig(**{**base.model_dump(), **extra})
        except ValidationError as err:
            raise ValueError(f"train.overrides.{model}.{task}: {_first_error(err)}") from None


class ModelSpec(Strict):
    """Hyperparameters of one model: ``common`` for every task, then per-task additions."""

    common: dict[str, Any] = Field(default_factory=dict)
    is2re: dict[str, Any] = Field(default_factory=dict)
    s2ef: dict[str, Any] = Field(default_factory=dict)

    def for_task(self, task: str) -> dict[str, Any]:
        return {**self.common, **getattr(self, task)}


class SymmetryEvalConfig(Strict):
    n_transforms: PositiveInt = 8
    max_graphs: PositiveInt = 64
    degenerate_tol: PositiveFloat = 1e-3


class BenchmarkConfig(Strict):
    batch_size: PositiveInt = 16
    n_batches: PositiveInt = 2
    repeats: PositiveInt = 3
    warmup: Annotated[int, Field(ge=0)] = 1
    threads: PositiveInt = 2
    paper_hparams: bool = True


class Profile(Strict):
    description: str = ""
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    models: dict[str, ModelSpec] = Field(default_factory=dict)
    symmetry: SymmetryEvalConfig = SymmetryEvalConfig()
    benchmark: BenchmarkConfig = BenchmarkConfig()


class TrainMatrix(Strict):
    model: list[str] = Field(min_length=1)
    dataset: list[Literal[DATASETS]] = Field(min_length=1)
    symmetry: list[Literal[SYMMETRY_METHODS]] = Field(min_length=1)


class Params(Strict):
    profile: str
    train_matrix: TrainMatrix
    profiles: dict[str, Profile]

    @field_validator("profiles")
    @classmethod
    def _needs_profiles(cls, v: dict[str, Profile]) -> dict[str, Profile]:
        if not v:
            raise ValueError("define at least one profile")
        return v

    @model_validator(mode="after")
    def _profile_exists(self) -> Params:
        if self.profile not in self.profiles:
            raise ValueError(f"profile '{self.profile}' is not defined; choose one of {sorted(self.profiles)}")
        return self

    @property
    def active(self) -> Profile:
        return self.profiles[self.profile]


class ConfigError(ValueError):
    """params.yaml is invalid; the message names the key and what is allowed."""


def _first_error(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check spelling; see params.yaml comments for the allowed keys)"
        if isinstance(e.get("input"), bool) and e["type"] == "string_type":
            msg += "; YAML reads NO/YES/ON/OFF as booleans: quote the value, e.g. \"NO\""
        parts.append(f"{loc}: {msg}" + (f" (got {e['input']!r})" if e["type"] != "extra_forbidden" else ""))
    return "; ".join(parts)


def _check_models(params: Params) -> None:
    """Every model named anywhere must be registered and its hyperparameters accepted by its constructor."""
    from baselines.registry import available_models, check_hparams  # deferred: imports torch

    known = set(available_models())
    unknown = [m for m in params.train_matrix.model if m not in known]
    if unknown:
        raise ConfigError(f"train_matrix.model: unknown model(s) {unknown}; registered: {sorted(known)}")
    for pname, prof in params.profiles.items():
        for mname, spec in prof.models.items():
            if mname not in known:
                raise ConfigError(f"profiles.{pname}.models.{mname}: unknown model; registered: {sorted(known)}")
            for task in DATASETS:
                try:
                    check_hparams(mname, spec.for_task(task))
                except ValueError as err:
                    raise ConfigError(f"profiles.{pname}.models.{mname} ({task}): {err}") from None
        mx = params.train_matrix
        for mname, per_task in prof.train.runs.items():
            for task, methods in per_task.items():
                where = f"profiles.{pname}.train.runs.{mname}.{task}"
                if mname not in mx.model or task not in mx.dataset:
                    raise ConfigError(f"{where}: ({mname}, {task}) is not in train_matrix, so DVC never runs it; "
                                      f"train_matrix.model = {mx.model}, train_matrix.dataset = {mx.dataset}")
                missing = [m for m in methods if m not in mx.symmetry]
                if missing:
                    raise ConfigError(f"{where}: {missing} not in train_matrix.symmetry {mx.symmetry}")
        for mname, per_task in prof.train.overrides.items():
            for task in per_task:
                if task not in DATASETS:
                    raise ConfigError(f"profiles.{pname}.train.overrides.{mname}.{task}: unknown task; "
                                      f"allowed: {list(DATASETS)}")
                try:
                    prof.train.for_run(mname, task)
                except ValueError as err:
                    raise ConfigError(f"profiles.{pname}.{err}") from None


def parse_params(raw: dict[str, Any], check_models: bool = True) -> Params:
    """Validate a params mapping; raise ConfigError with the offending key path."""
    if not isinstance(raw, dict):
        raise ConfigError(f"params must be a mapping at the top level, got {type(raw).__name__}")
    try:
        params = Params(**raw)
    except ValidationError as err:
        raise ConfigError(f"params.yaml is invalid: {_first_error(err)}") from None
    if check_models:
        _check_models(params)
    return params


def load_params(path: Path | str = PARAMS_PATH, check_models: bool = True) -> Params:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} not found: run from the repository root (where params.yaml lives)")
    with path.open() as fh:
        try:
            raw = yaml.safe_load(fh)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from None
    return parse_params(raw, check_models=check_models)


def params_hash(params: Params) -> str:
    """A short hash of the validated params (for provenance records)."""
    blob = json.dumps(params.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b.c": value} for MLflow params."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


if __name__ == "__main__":  # `python -m pipeline.config` validates params.yaml and prints the active profile
    p = load_params()
    print(f"params.yaml OK: profile={p.profile}, hash={params_hash(p)}")
