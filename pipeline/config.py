"""params.yaml -> a typed, validated config. The only reader of params.yaml.

Validation happens once, before any work: an unknown key, a wrong type (strict: no ``"2"`` or ``true`` for
an integer, no string for a number; finite floats only), an impossible value, or a model hyperparameter the
registered constructor does not take (name, or annotated type) fails with one line per error, each naming
the key path, the value and what is allowed. ``python -m pipeline.config`` is the DVC stage ``validate``,
which every other stage depends on (so DVC stops there before deleting any stage's outputs); each stage's
``main()`` goes through ``stage_main``. Library code receives plain keyword arguments taken from these
models, never the config object itself.

Layout of params.yaml:

- ``profile``: the active profile (one key; ``dvc exp run -S profile=smoke``).
- ``train_cells``: the experiment design, one line per (model, dataset, symmetry method) the paper trains,
  ``<model>-<dataset>-<symmetry>: {model, dataset, symmetry}``; the DVC ``train`` stage is a ``foreach``
  over them (stage ``train@<cell>``). A new baseline is one file in ``baselines/`` plus one line here.
- ``profiles``: scale (data sizes, epochs, hyperparameters) of ``smoke``, ``default`` and ``paper``; a
  profile's ``train.only`` (shell-style patterns over cell names) keeps a subset of the cells.
"""

from __future__ import annotations

import fnmatch
import hashlib
import inspect
import json
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from faenet.data.compositions import EMT_METALS
from faenet.tasks import CATALYSIS, EVAL_SPLITS, FORCE_TASKS, FRAME_DIM, MOLECULES, TASKS  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
PARAMS_PATH = ROOT / "params.yaml"

SYMMETRY_METHODS = ("none", "sfa", "full", "se3-sfa", "se3-full", "da")
DATASETS = TASKS  # the task facts live in faenet.tasks (re-exported here for the pipeline's imports)
ELEMENTS_EMT = EMT_METALS
FACETS = ("111", "100", "110")
QM9_TARGET_NAMES = ("mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0", "U", "H", "G", "cv")

#: Content of the validate stage's output (``metrics/validated.json``). Constant on purpose: every stage
#: depends on that file, so a content that changed with params would rerun every stage on every edit.
VALIDATED_STAMP = {"schema": 1, "validated_by": "pipeline/config.py",
                   "note": "params.yaml passed validation; constant so a params edit reruns only the stages it affects"}

PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]


def _no_duplicates(v: list[Any]) -> list[Any]:
    dup = sorted({str(x) for x in v if v.count(x) > 1})
    if dup:
        raise ValueError(f"listed twice: {dup}; list each value once")
    return v


def _list_to_tuple(v: Any) -> Any:
    # YAML has no tuples: a fixed-length list is written as a YAML list; strict mode would refuse it.
    return tuple(v) if isinstance(v, list) else v


Distinct = AfterValidator(_no_duplicates)
Seeds = Annotated[list[NonNegInt], Field(min_length=1), Distinct]


class Strict(BaseModel):
    # strict: no "2" or true for an integer, no "1e-3" for a float (a YAML int is still a float: lr: 1);
    # allow_inf_nan=False: .inf / .nan are typos, never settings.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


# ----------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------

class CatalysisData(Strict):
    """IS2RE and S2EF: the embedded EMT set (``emt``) or the real OC20 LMDBs (``oc20``)."""

    source: Literal["emt", "oc20"] = "emt"
    seed: NonNegInt = 0
    n_systems: PositiveInt = 200
    # Fractions of the in-distribution systems (the OOD splits are defined by held-out alloys/adsorbates).
    val_id_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.15
    test_fraction: Fraction = 0.1
    # Pure metals (all in training), training alloys, and held-out alloys (OOD-cat: compositions absent from
    # training made of its metals, as OC20's): "A3B" or "AB" of two metals, e.g. Cu3Au, CuPd.
    metals: list[Literal[ELEMENTS_EMT]] = Field(default_factory=lambda: list(ELEMENTS_EMT), min_length=1)
    alloys: list[str] = Field(default_factory=lambda: ["Cu3Au", "CuPd", "Ni3Al", "PtNi"])
    ood_alloys: list[str] = Field(default_factory=lambda: ["Cu3Pd", "AuCu"])
    facets: list[Literal[FACETS]] = Field(default_factory=lambda: list(FACETS), min_length=1)
    adsorbates: list[str] = Field(default_factory=lambda: ["H", "O", "N", "C", "OH", "CO", "NO", "CH", "NH",
                                                            "CH2"], min_length=2)
    ood_adsorbates: list[str] = Field(default_factory=lambda: ["NO"])
    slab_size: Annotated[tuple[PositiveInt, PositiveInt, Annotated[int, Field(ge=3)]],
                         BeforeValidator(_list_to_tuple)] = (2, 2, 3)
    s2ef_frame_stride: PositiveInt = 2
    fmax: PositiveFloat = 0.05
    max_steps: PositiveInt = 200
    workers: PositiveInt = 2
    cutoff: PositiveFloat = 6.0
    max_num_neighbors: PositiveInt = 50
    # OC20 only: where the downloaded archives live (relative to the repo root).
    oc20_dir: str = "data_raw/oc20"
    oc20_is2re_size: Literal["10k", "100k", "all"] = "all"
    oc20_s2ef_size: Literal["200k", "2M", "20M", "all"] = "2M"

    @model_validator(mode="after")
    def _held_out_are_subsets(self) -> CatalysisData:
        from faenet.data.compositions import ADSORBATES, check_element_coverage, parse_catalyst

        for name in (*self.alloys, *self.ood_alloys):
            if parse_catalyst(name)[1] is None:
                raise ValueError(f"alloy {name!r} is a pure metal: list it under metals (pure metals are all in "
                                 "training)")
        both = sorted(set(self.alloys) & set(self.ood_alloys))
        if both:
            raise ValueError(f"alloys {both} are in both alloys (training) and ood_alloys: keep each in one list")
        unknown = sorted(set(self.adsorbates) - set(ADSORBATES))
        if unknown:
            raise ValueError(f"adsorbates {unknown} unknown; known: {sorted(ADSORBATES)}")
        extra_a = set(self.ood_adsorbates) - set(self.adsorbates)
        if extra_a:
            raise ValueError(f"ood_adsorbates {sorted(extra_a)} must also be listed in adsorbates {self.adsorbates}")
        if set(self.ood_adsorbates) == set(self.adsorbates):
            raise ValueError("ood_adsorbates holds every adsorbate: leave at least one in-distribution one")
        check_element_coverage([*self.metals, *self.alloys, *self.ood_alloys], self.ood_alloys, self.adsorbates,
                               self.ood_adsorbates)
        return self


class QM7XData(Strict):
    """QM7-X: the embedded QM7-X-like set (``embedded``: RDKit + GFN2-xTB) or the real HDF5 files (``real``)."""

    source: Literal["embedded", "real"] = "embedded"
    seed: NonNegInt = 0
    n_molecules: PositiveInt = 100
    conformers_per_molecule: PositiveInt = 8
    n_equilibrium: PositiveInt = 1
    displacement: Annotated[tuple[NonNegFloat, NonNegFloat], BeforeValidator(_list_to_tuple)] = (0.02, 0.06)
    unknown_fraction: Fraction = 0.1
    val_ood_fraction: Fraction = 0.1
    val_id_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1
    cutoff: PositiveFloat = 5.0
    max_num_neighbors: PositiveInt = 40
    workers: PositiveInt = 2
    # real only: where the Zenodo files are downloaded to (relative to the repo root), and which of them.
    raw_dir: str = "data_raw/qm7x"
    set_ids: list[str] = Field(default_factory=lambda: ["1000", "2000", "3000", "4000", "5000", "6000",
                                                        "7000", "8000"], min_length=1)


class QM9Data(Strict):
    """QM9: the embedded QM9-like set (``embedded``: RDKit + GFN2-xTB properties) or the real QM9 (``real``)."""

    source: Literal["embedded", "real"] = "embedded"
    seed: NonNegInt = 0
    n_molecules: PositiveInt = 200
    n_trials: PositiveInt = 4
    polarizability: bool = True
    cutoff: PositiveFloat = 6.0
    max_num_neighbors: PositiveInt = 30
    workers: PositiveInt = 2
    raw_dir: str = "data_raw/qm9"
    # real only: the fork's split sizes (seeded permutation: train, val, the rest test). Smaller values serve a
    # subset of the raw files (tests/test_real_format_e2e.py runs the pipeline on a 14-molecule fixture).
    n_train: PositiveInt = 110_000
    n_val: PositiveInt = 10_000


class MD17Data(Strict):
    """MD17: the embedded MD17-like set (``embedded``: Langevin MD driven by GFN2-xTB, ``faenet.data.md17``) or
    the real revised MD17 (``real``: ``raw_dir/rmd17_<molecule>.npz`` of each listed molecule, PBE labels)."""

    source: Literal["embedded", "real"] = "embedded"
    seed: NonNegInt = 0
    # MD17 names (faenet.data.md17.MD17_MOLECULES) or SMILES; MD17 trains one model per molecule: list one.
    molecules: Annotated[list[str], Field(min_length=1), Distinct] = Field(default_factory=lambda: ["ethanol"])
    n_trajectories: PositiveInt = 2
    frames_per_trajectory: PositiveInt = 200
    stride: PositiveInt = 10
    equilibration_steps: NonNegInt = 400
    temperature_K: PositiveFloat = 500.0  # MD17's
    timestep_fs: PositiveFloat = 0.5  # MD17's
    friction_per_fs: PositiveFloat = 0.02
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    cutoff: PositiveFloat = 5.0
    max_num_neighbors: PositiveInt = 40
    workers: PositiveInt = 2
    # real only: where the rMD17 npz files are (relative to the repo root) and how many frames to take (rMD17:
    # 100k per molecule; the same random val/test fractions, seeded, split them).
    raw_dir: str = "data_raw/rmd17"
    n_frames: PositiveInt = 100_000

    @model_validator(mode="after")
    def _leaves_training_frames(self) -> MD17Data:
        total = len(self.molecules) * self.n_trajectories * self.frames_per_trajectory
        # As faenet.data.md17 counts them: at least one frame each for val and test.
        n_eval = max(1, round(self.val_fraction * total)) + max(1, round(self.test_fraction * total))
        if self.source == "embedded" and n_eval >= total:
            raise ValueError(f"{total} frames (molecules x n_trajectories x frames_per_trajectory) leave none for "
                             f"training after val_fraction {self.val_fraction} and test_fraction {self.test_fraction};"
                             " add frames or lower the fractions")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction} >= 1 leaves "
                             "no training frames")
        return self


class DataConfig(Strict):
    catalysis: CatalysisData = CatalysisData()
    qm7x: QM7XData = QM7XData()
    qm9: QM9Data = QM9Data()
    md17: MD17Data = MD17Data()


# ----------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------

class TaskTrainConfig(Strict):
    """Optimisation for one task (Table 7 rows: optimiser, scheduler, warm-up, lr, batch size, loss coeffs)."""

    epochs: PositiveInt = 10
    batch_size: PositiveInt = 16
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegFloat = 0.0
    scheduler: Literal["cosine", "plateau", "constant"] = "cosine"
    warmup_steps: NonNegInt = 0
    warmup_factor: Annotated[float, Field(gt=0, le=1)] = 0.2
    plateau_factor: Annotated[float, Field(gt=0, lt=1)] = 0.9
    plateau_patience: NonNegInt = 5
    grad_clip: NonNegFloat = 10.0
    loss: Literal["mae", "mse"] = "mae"
    energy_coef: NonNegFloat = 1.0
    force_coef: NonNegFloat = 0.0
    energy_grad_coef: NonNegFloat = 0.0
    # Target normalisation: mean/std of the training targets, optionally after subtracting per-element
    # energies fitted by least squares on the training set (QM7-X/QM9 total energies, the fork's lse_shift).
    normalize_targets: bool = True
    element_shift: bool = False
    regress_forces: Literal["", "direct", "from_energy", "direct_with_gradient_target"] = ""
    train_on_free_atoms: bool = True
    rewiring: Literal["none", "remove-tag-0"] = "none"
    # QM9 only: the properties to train, one model each (the paper trains one model per target).
    targets: Annotated[list[Literal[QM9_TARGET_NAMES]], Distinct] = Field(default_factory=list)
    # Seeds of this task (None: the profile's train.seeds), e.g. one seed for QM9 whose table has no std.
    seeds: Seeds | None = None


class TrainConfig(Strict):
    seeds: Seeds = Field(default_factory=lambda: [0])
    eval_batch_size: PositiveInt = 64
    threads: PositiveInt = 2
    # Independent runs of a cell (seeds, QM9 properties) train in this many processes, threads // workers
    # torch threads each (small models use two cores better as two runs than as one run on two threads).
    workers: PositiveInt = 1
    # Shell-style patterns over cell names ``<model>-<dataset>-<symmetry>``; empty = every designed cell.
    only: list[str] = Field(default_factory=list)
    # Where runs compute (faenet.device.resolve_device): auto = CUDA when available, else the CPU.
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda|cuda:\d+)$")] = "auto"
    # Mixed precision of the training forward (off | bf16 | fp16, fp16 with a grad scaler and CUDA only); never
    # used for evaluation or symmetry metrics. Not "off" changes the runs' keys.
    amp: Literal["off", "bf16", "fp16"] = "off"
    # Read the LMDB splits lazily (true) instead of decoding each whole split into memory (false, the default):
    # for OC20 S2EF-2M / QM7-X, which do not fit. Same records and batches; the normaliser from one pass
    # (faenet.training.Normalizer.fit_stream): bit-identical without an element shift, to float rounding with
    # one (then, only, in the runs' keys).
    stream: bool = False
    # DataLoader worker processes per training process reading and collating the batches (0: in the training
    # process, the default); persistent across epochs, each with its own LMDB environment. Same batches and
    # numbers for any count, so not in the runs' keys. With train.workers > 1, each run's process has its own.
    num_workers: NonNegInt = 0
    # DDP ranks of the train stage on this node (> 1: the stage re-executes itself under torchrun --standalone;
    # under torchrun/srun already, the launcher's world size is used). Global batch = batch_size x ranks.
    nproc_per_node: PositiveInt = 1
    # Under DDP, split each global batch among ranks by atoms per graph (LPT greedy) rather than in contiguous
    # slices, so no rank waits for one with the big graphs (faenet.distributed.partition_by_atoms); the same union
    # batches, so not in the runs' keys. Off by default.
    balance_ranks: Literal["off", "atoms"] = "off"
    is2re: TaskTrainConfig = TaskTrainConfig()
    s2ef: TaskTrainConfig = TaskTrainConfig(force_coef=30.0, regress_forces="direct")
    qm7x: TaskTrainConfig = TaskTrainConfig(force_coef=100.0, regress_forces="direct", element_shift=True)
    qm9: TaskTrainConfig = TaskTrainConfig(targets=["gap"])
    # One molecule: its energies differ by conformation only, so no per-element shift (normalisation centres them).
    md17: TaskTrainConfig = TaskTrainConfig(force_coef=100.0, regress_forces="direct")
    # Per-(model, task) overrides of the task settings, e.g. {"faenet": {"s2ef": {"rewiring": "remove-tag-0"}}}.
    # Model names are checked against the registry by validate_models.
    overrides: dict[str, dict[Literal[DATASETS], dict[str, Any]]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _targets_only_for_qm9(self) -> TrainConfig:
        errors = []
        for task in (t for t in DATASETS if t != "qm9"):
            if getattr(self, task).targets:
                errors.append(f".{task}.targets: only qm9 trains per-property models; leave it empty")
        if not self.qm9.targets:
            errors.append(f".qm9.targets: name at least one property, e.g. [gap]; QM9 names: "
                          f"{list(QM9_TARGET_NAMES)}")
        for model, per_task in self.overrides.items():
            for task, extra in per_task.items():
                try:
                    TaskTrainConfig(**{**getattr(self, task).model_dump(), **extra})
                except ValidationError as err:
                    errors += [f".overrides.{model}.{task}.{line}" for line in _error_lines(err)]
        if errors:
            raise ValueError("\n".join(errors))
        return self

    def seeds_for(self, model: str, task: str) -> list[int]:
        own = self.for_run(model, task).seeds
        return list(own) if own is not None else list(self.seeds)

    def for_run(self, model: str, task: str) -> TaskTrainConfig:
        base: TaskTrainConfig = getattr(self, task)
        extra = self.overrides.get(model, {}).get(task, {})
        try:
            return TaskTrainConfig(**{**base.model_dump(), **extra})
        except ValidationError as err:
            raise ConfigError([f"train.overrides.{model}.{task}.{line}" for line in _error_lines(err)]) from None


class ModelSpec(Strict):
    """Hyperparameters of one model: ``common`` for every task, then per-task additions."""

    common: dict[str, Any] = Field(default_factory=dict)
    is2re: dict[str, Any] = Field(default_factory=dict)
    s2ef: dict[str, Any] = Field(default_factory=dict)
    qm7x: dict[str, Any] = Field(default_factory=dict)
    qm9: dict[str, Any] = Field(default_factory=dict)
    md17: dict[str, Any] = Field(default_factory=dict)

    def for_task(self, task: str) -> dict[str, Any]:
        return {**self.common, **getattr(self, task)}


# ----------------------------------------------------------------------------------------------------------
# Evaluation stages
# ----------------------------------------------------------------------------------------------------------

FRAME_CONSTRUCTIONS = ("pca", "lattice", "edges")  # = faenet.frames.FRAME_CONSTRUCTIONS (config stays torch-free)


class WrapIConfig(Strict):
    """Wrap-I in stage ``symmetry`` (beyond the paper): the change of a trained FA cell's energy when atoms are
    moved by lattice vectors (``n_transforms`` draws of random integer offsets per atom, and of an in-plane
    translation then wrapping) on ``max_graphs`` graphs of the evaluated split, with each of ``frames``
    (``faenet.frames.FRAME_CONSTRUCTIONS``: ``pca`` is the paper's and the one the cells were trained with;
    ``lattice`` / ``edges`` are wrap-invariant constructions swapped in at inference). ``cells``: shell-style
    patterns over cell names; only cells with an FA method (sfa, full, se3-*) are evaluated (the frames of
    none / DA cells are not used). SFA draws the same frame for a structure and its moved copy, so Wrap-I
    measures the frames, not the draw. ``edge_cutoff`` (Å) weights the edges of ``edges``. Empty ``cells``
    turns it off.
    """

    cells: list[str] = Field(default_factory=list)
    frames: Annotated[list[Literal[FRAME_CONSTRUCTIONS]], Distinct] = Field(
        default_factory=lambda: list(FRAME_CONSTRUCTIONS), min_length=1)
    n_transforms: PositiveInt = 2
    max_graphs: PositiveInt = 16
    edge_cutoff: PositiveFloat = 6.0


class SymmetryEvalConfig(Strict):
    """Stage ``symmetry`` (App. D, Tables 11-12): metrics of every trained cell on the ID validation split.

    ``max_graphs`` graphs of ``val_id`` (a subset drawn with ``seed`` when the split is larger), each with
    ``n_transforms`` random rotations and reflections (translations: Gaussian, ``translation_scale`` Å);
    ``degenerate_tol``: relative PCA eigengap below which a graph's frames count as degenerate;
    ``notrain``: also evaluate the untrained FAENet (the paper's No-Train row); ``workers``: processes that
    evaluate (cell, seed) jobs in parallel, each with ``threads`` torch threads (results do not depend on
    either: every job seeds its own draws); ``exclude``: shell-style patterns over cell names of trained
    cells NOT to evaluate (listed as such in the tables and the JSON), e.g. ``dimenet_pp-*``.
    """

    datasets: list[Literal[DATASETS]] = Field(default_factory=lambda: ["is2re", "s2ef"], min_length=1)
    n_transforms: PositiveInt = 8
    max_graphs: PositiveInt = 64
    batch_size: PositiveInt = 16
    degenerate_tol: PositiveFloat = 1e-3
    translation_scale: NonNegFloat = 5.0
    seed: NonNegInt = 0
    notrain: bool = True
    # One intra-op thread: the evaluated batches are small, and with 2 threads on a shared 2-core machine
    # OpenMP spin-waits made a Full FA forward ~100x slower (measured: 20 ms vs 2 s under load).
    threads: PositiveInt = 1
    workers: PositiveInt = 1
    exclude: list[str] = Field(default_factory=list)
    wrap_i: WrapIConfig = Field(default_factory=WrapIConfig)

    @field_validator("datasets")
    @classmethod
    def _energy_tasks_only(cls, v: list[str]) -> list[str]:
        if "qm9" in v:
            allowed = [t for t in DATASETS if t != "qm9"]
            raise ValueError("qm9 trains one model per molecular property (not energies in eV), which the "
                             f"App. D metrics (meV) do not apply to; choose among {allowed}")
        if len(set(v)) != len(v):
            raise ValueError(f"datasets lists a task twice: {v}")
        return v


class ExpressivityConfig(Strict):
    """Stage ``expressivity`` (App. B.2, Tables 3-5): the geometric-gnn-dojo pairs, paper and strict protocols.

    ``models`` are ``<model>`` or ``<model>-<symmetry>`` (e.g. ``faenet-sfa``). ``hparams`` are keyed by the
    base model (``faenet``) and optionally by a full name (``faenet-sfa``), which is merged over the base's;
    the stage sets the number of interaction layers itself (``kchain_layers`` for Table 3, ``pair_layers``
    for Tables 4-5) and the cutoff to the dojo's 10 Å unless given. ``body_pairs`` are Table 5's columns
    (``4body_chiral`` is the paper's "4-body"; ``4body_nonchiral`` is a dojo pair the paper does not report).
    ``paper_draws`` repeats the paper-protocol evaluation of stochastic models (SFA; deterministic models are
    evaluated once), ``strict_transforms`` is the number of random E(3) moves per graph of the strict protocol.
    ``reuse_model`` reproduces the dojo's bug of training ONE model object across all seeds (off: a fresh,
    seeded model per seed).
    """

    models: list[str] = Field(default_factory=lambda: ["schnet", "dimenet_pp", "faenet", "faenet-sfa",
                                                       "faenet-full", "forcenet"], min_length=1)
    n_seeds: PositiveInt = 10
    epochs: PositiveInt = 100
    lr: PositiveFloat = 1e-4
    kchain_k: Annotated[int, Field(ge=2)] = 4
    kchain_layers: list[PositiveInt] = Field(default_factory=lambda: [1, 2, 3, 4, 5], min_length=1)
    folds: list[Annotated[int, Field(ge=2)]] = Field(default_factory=lambda: [2, 3, 5, 7], min_length=1)
    # The second rotsym graph is the first rotated by 2π / (fold + r); the dojo draws r in 1..fold unseeded.
    rotsym_r: PositiveInt = 1
    body_pairs: list[Literal["2body", "3body", "4body_chiral", "4body_nonchiral"]] = Field(
        default_factory=lambda: ["2body", "3body", "4body_chiral", "4body_nonchiral"], min_length=1)
    pair_layers: PositiveInt = 1
    strict_transforms: PositiveInt = 16
    paper_draws: PositiveInt = 16
    reuse_model: bool = False
    workers: PositiveInt = 2
    hparams: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> ExpressivityConfig:
        for name in ("models", "kchain_layers", "folds", "body_pairs"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"{name}: duplicate entries in {values}")
        if self.rotsym_r > min(self.folds):
            raise ValueError(f"rotsym_r={self.rotsym_r} must lie in 1..fold for every fold (the rotation is "
                             f"2π / (fold + r) < 2π / fold); smallest fold is {min(self.folds)}")
        return self


class AblationConfig(Strict):
    """Stage ``ablation`` (App. B.3, Table 6): FAENet variants trained on IS2RE with SFA, MAE and throughput.

    Each variant is the profile's FAENet IS2RE hyperparameters plus the Table 6 row's switches
    (``faenet.model.TABLE6_ABLATIONS``), trained with the profile's ``train.is2re`` settings (``epochs`` and
    ``max_train_graphs`` shorten them to fit a CPU budget), once per seed. Throughput: forward passes in eval
    mode over the same fixed batches for every variant, the variants interleaved round by round so a change of
    machine load hits all of them alike; ``throughput_data`` = ``oc20_like`` (OC20-sized 4x4x4 slabs +
    adsorbate, ``faenet.throughput.oc20_like_slabs``, seed 0) or ``val_id`` (the first graphs of the embedded
    val_id split), with the training rewiring applied.
    """

    variants: Annotated[list[str], Distinct] = Field(default_factory=list)  # Table 6 rows; empty = all of them
    seeds: Seeds = Field(default_factory=lambda: [0])
    symmetry: Literal[SYMMETRY_METHODS] = "sfa"
    epochs: PositiveInt | None = None  # None = train.is2re.epochs
    max_train_graphs: PositiveInt | None = None  # None = the whole train split
    throughput_data: Literal["oc20_like", "val_id"] = "oc20_like"
    throughput_batch_size: PositiveInt = 16
    throughput_batches: PositiveInt = 2
    throughput_warmup: NonNegInt = 1
    throughput_repeats: PositiveInt = 5


class BenchmarkConfig(Strict):
    """Stage ``benchmark``: inference throughput, training time per epoch and peak memory of every model and
    symmetry method, at the profile's and the paper's hyperparameters, under the paper's and the same-graph
    protocol, plus a scaling curve (``pipeline/benchmark.py`` documents the protocols and the output).

    Same-graph protocol: ``n_batches`` batches of ``batch_size`` OC20-sized slabs, identical for every model.
    Paper protocol: each model's IS2RE eval batch size in the authors' configs (``paper_batch_sizes``),
    capped at ``max_batch_size`` (None = no cap). ``max_graphs``: models timed on only their first
    ``max_graphs[model]`` graphs of each protocol (those too slow on CPU). Training steps are timed on the
    first ``train_graphs`` graphs (``train_repeats`` timed passes after one warm-up pass).
    """

    batch_size: PositiveInt = 16
    n_batches: PositiveInt = 2
    repeats: PositiveInt = 3
    warmup: NonNegInt = 1
    threads: PositiveInt = 2
    paper_hparams: bool = True
    paper_batch_sizes: dict[str, PositiveInt] = Field(
        default_factory=lambda: {"faenet": 256, "schnet": 256, "dimenet_pp": 16, "forcenet": 32, "gemnet_t": 32,
                                 "gemnet_q": 32})
    max_batch_size: PositiveInt | None = None
    max_graphs: dict[str, PositiveInt] = Field(default_factory=dict)
    # Models of train_cells not benchmarked (named in the report): ``<model>`` at every hparam set, or
    # ``<hparam set>:<model>`` (e.g. ``paper:gemnet_t``) at one.
    exclude_models: Annotated[list[str], Distinct] = Field(default_factory=list)
    train_graphs: PositiveInt = 8
    train_repeats: PositiveInt = 2
    memory: bool = True
    # process: every (hparam set, model) in a fresh process (allocator state independent of the models before).
    isolation: Literal["process", "none"] = "process"
    # glibc allocator policy of the main measurements (faenet.throughput.set_malloc_regime): steady = freed
    # memory reused (a long-running process, or a caching allocator as on GPUs); default = glibc's adaptive one,
    # whose state flips during a measurement (SchNet then runs at one speed or half of it).
    malloc_regime: Literal["steady", "cold", "default"] = "steady"
    # Allocator-sensitivity block (speed-target pair under two glibc policies): graphs timed.
    allocator_graphs: PositiveInt = 8
    # S2EF training steps (forces) of FAENet and ForceNet: the paper's epoch-time claim vs ForceNet is S2EF's.
    s2ef_train: bool = True
    # Scaling curve: slabs of n x n x 4 atoms (+ an adsorbate) for each n, at these hparam sets.
    scaling_sizes: list[PositiveInt] = Field(default_factory=lambda: [2, 3, 4, 5], min_length=2)
    scaling_batch_size: PositiveInt = 4
    scaling_hparams: list[Literal["profile", "paper"]] = Field(default_factory=lambda: ["profile"], min_length=1)


class ScalingConfig(Strict):
    """Stage ``scaling`` (issue: does each accuracy gap close with data?): the listed train cells retrained, with
    their own settings and seeds, on nested seeded subsets of their training split (``fractions``; the full
    split is the train stage's runs, reused). Same epochs at every size, so the same passes over each sample.
    Cells the profile does not train are skipped (the claims' trend column then says nothing)."""

    cells: Annotated[list[str], Distinct] = Field(default_factory=list)
    fractions: Annotated[list[Annotated[float, Field(gt=0, lt=1)]], Distinct] = Field(
        default_factory=lambda: [0.25, 0.5])
    subset_seed: NonNegInt = 0


class SimulateConfig(Strict):
    """Stage ``simulate`` (beyond the paper): NVE molecular dynamics with the trained S2EF and QM7-X cells
    through ``faenet.calculator.ModelCalculator``, the reference calculator (EMT for slabs, GFN2-xTB for
    molecules) as the control; energy drift, Fu et al.'s stability and Bigi et al.'s Jacobian asymmetry.

    ``cells``: shell-style patterns over trained cell names (S2EF / QM7-X only); ``n_structures`` first
    structures of each task's ``val_id`` split (the last S2EF frame of a system: nearest to its relaxed
    structure); ``force_modes``: "direct" (force head, where the model has one) and / or "from_energy";
    ``frame_policies``: for FA cells, "full" / "redraw" / "fixed" (one run each, with the first force mode
    only beyond "full"); ``steps`` of ``slab_timestep_fs`` / ``molecule_timestep_fs`` (H atoms: shorter) from
    Maxwell-Boltzmann velocities at ``temperature_K`` (``seed``), energies recorded every ``interval`` steps;
    ``jacobian``: compute the Jacobian asymmetry of each (cell, force mode) at the first structure.
    ``max_num_neighbors``: the calculators' neighbour cap (None: the data's, as the models were trained). In
    the embedded 2x2 slabs periodic images tie in distance, so the data's cap (30) switches edges under any
    move and the potential jumps (finite differences of 1e3 eV/Å measured); a large cap removes the jumps at
    the price of graphs the models were not trained on.
    ``relax_structures``: BFGS relaxations (to ``relax_fmax`` eV/Å within ``relax_steps``) of the first IS2RE
    ``val_id`` initial structures with each S2EF cell and force mode (Full FA) and with EMT; 0 = none.
    """

    cells: list[str] = Field(default_factory=lambda: ["faenet-s2ef-sfa", "faenet-qm7x-sfa", "schnet-qm7x-none",
                                                      "forcenet-s2ef-none"])
    n_structures: PositiveInt = 1
    force_modes: Annotated[list[Literal["direct", "from_energy"]], Distinct, Field(min_length=1)] = Field(
        default_factory=lambda: ["direct", "from_energy"])
    frame_policies: Annotated[list[Literal["full", "redraw", "fixed"]], Distinct, Field(min_length=1)] = Field(
        default_factory=lambda: ["full", "redraw"])
    steps: PositiveInt = 200
    slab_timestep_fs: PositiveFloat = 1.0
    molecule_timestep_fs: PositiveFloat = 0.5
    temperature_K: NonNegFloat = 300.0
    interval: PositiveInt = 5
    seed: NonNegInt = 0
    jacobian: bool = True
    reference: bool = True
    max_num_neighbors: PositiveInt | None = None
    relax_structures: NonNegInt = 0
    relax_fmax: PositiveFloat = 0.05
    relax_steps: PositiveInt = 100
    threads: PositiveInt = 1


class ContinuityConfig(Strict):
    """Stage ``continuity`` (beyond the paper): FA predictions of trained ``cells`` along a path through a
    degenerate PCA spectrum (``faenet.continuity``): the ``val_id`` structure nearest to degeneracy among the
    first ``candidates``, ``n_points`` (odd: one on the crossing) along a path whose ends split the two leading
    variances by ``width`` (relative); SFA is the mean of ``n_draws`` draws (``seed``). ``uncap_neighbors``:
    evaluate without the data's neighbour cap, which ranks equidistant periodic images and makes the backbone
    itself jump along any strain (see ``SimulateConfig.max_num_neighbors``)."""

    cells: list[str] = Field(default_factory=lambda: ["faenet-qm7x-sfa", "faenet-is2re-sfa"])
    n_points: PositiveInt = 41
    width: PositiveFloat = 0.1
    n_draws: PositiveInt = 16
    candidates: PositiveInt = 64
    seed: NonNegInt = 0
    uncap_neighbors: bool = True

    @field_validator("n_points")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v < 5 or v % 2 == 0:
            raise ValueError(f"n_points must be odd and >= 5 (a point on the crossing, second differences), got {v}")
        return v

    @field_validator("width")
    @classmethod
    def _below_one(cls, v: float) -> float:
        if v >= 1:
            raise ValueError(f"width (relative split of the two variances) must be < 1, got {v}")
        return v


class Profile(Strict):
    description: str = ""
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    hparams: dict[str, ModelSpec] = Field(default_factory=dict)
    symmetry: SymmetryEvalConfig = SymmetryEvalConfig()
    expressivity: ExpressivityConfig = ExpressivityConfig()
    ablation: AblationConfig = AblationConfig()
    benchmark: BenchmarkConfig = BenchmarkConfig()
    scaling: ScalingConfig = ScalingConfig()
    simulate: SimulateConfig = SimulateConfig()
    continuity: ContinuityConfig = ContinuityConfig()

    def model_hparams(self, model: str, task: str) -> dict[str, Any]:
        """The profile's hyperparameters of ``model`` for ``task`` ({} = the constructor's defaults)."""
        spec = self.hparams.get(model)
        return spec.for_task(task) if spec is not None else {}


class TrainCell(Strict):
    """One designed training run: a stage ``train@<model>-<dataset>-<symmetry>`` of the DVC ``foreach``."""

    model: str = Field(min_length=1)
    dataset: Literal[DATASETS]
    symmetry: Literal[SYMMETRY_METHODS]


def _check_cells(cells: dict[str, TrainCell]) -> dict[str, TrainCell]:
    errors = []
    for name, c in cells.items():
        want = cell_name(c.model, c.dataset, c.symmetry)
        if name != want:
            errors.append(f"{name}: a cell is named <model>-<dataset>-<symmetry>; rename it to {want!r} "
                          "(the DVC stage is train@<name>)")
    if errors:
        raise ValueError("\n".join(errors))
    return cells


class Params(Strict):
    profile: str
    train_cells: Annotated[dict[str, TrainCell], Field(min_length=1)]
    profiles: dict[str, Profile]

    @field_validator("train_cells")
    @classmethod
    def _cells_named(cls, v: dict[str, TrainCell]) -> dict[str, TrainCell]:
        return _check_cells(v)

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
        for pname, prof in self.profiles.items():
            unknown = [c for c in prof.scaling.cells if c not in self.train_cells]
            if unknown:
                raise ValueError(f"profiles.{pname}.scaling.cells: {unknown} are not train_cells; choose from "
                                 f"{sorted(self.train_cells)}")
        return self

    @property
    def active(self) -> Profile:
        return self.profiles[self.profile]

    @property
    def design(self) -> dict[str, dict[str, list[str]]]:
        """``{model: {dataset: [symmetry methods]}}`` of ``train_cells``, in params order."""
        out: dict[str, dict[str, list[str]]] = {}
        for c in self.train_cells.values():
            out.setdefault(c.model, {}).setdefault(c.dataset, []).append(c.symmetry)
        return out

    def designed_cells(self) -> list[tuple[str, str, str]]:
        """Every (model, dataset, symmetry) of ``train_cells``, in params order."""
        return [(c.model, c.dataset, c.symmetry) for c in self.train_cells.values()]

    def trains(self, model: str, dataset: str, symmetry: str) -> bool:
        """Whether the active profile trains this cell (designed, and matching ``train.only`` if set)."""
        name = cell_name(model, dataset, symmetry)
        if name not in self.train_cells:
            return False
        return _selected(self.active.train.only, name)

    def trained_cells(self) -> list[tuple[str, str, str]]:
        return [c for c in self.designed_cells() if self.trains(*c)]


def cell_name(model: str, dataset: str, symmetry: str) -> str:
    return f"{model}-{dataset}-{symmetry}"


def _selected(only: list[str], name: str) -> bool:
    return not only or any(fnmatch.fnmatchcase(name, p) for p in only)


class ConfigError(ValueError):
    """params.yaml is invalid: one line per error, each naming the key, the value and what is allowed."""

    def __init__(self, errors: str | list[str]) -> None:
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))


# Friendlier wording of pydantic's error types; the got-value is appended by _error_lines.
_MESSAGES = {
    "int_type": "expected an integer (e.g. 2; not \"2\", 2.0 or true)",
    "float_type": "expected a number (e.g. 0.001 or 1; not a string or true/false)",
    "bool_type": "expected true or false (unquoted)",
    "string_type": "expected a string",
    "finite_number": "expected a finite number (.inf and .nan are not settings)",
    "list_type": "expected a list, e.g. [a, b]",
    "tuple_type": "expected a list, e.g. [a, b]",
    "dict_type": "expected a mapping (key: value lines)",
    "model_type": "expected a mapping (key: value lines)",
    "model_attributes_type": "expected a mapping (key: value lines)",
    "missing": "required key is missing; add it (see the committed params.yaml)",
}


def _short(value: Any) -> str:
    """A value for a message: never a whole section (a missing key must not dump the params dict)."""
    if isinstance(value, dict):
        return f"a mapping with keys {sorted(map(str, value))[:8]}" if value else "an empty mapping"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _unwrap(ann: Any) -> Any:
    """``Annotated[X, ...]`` and ``X | None`` -> ``X``."""
    while True:
        origin = typing.get_origin(ann)
        if origin is Annotated:
            ann = typing.get_args(ann)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(ann) if a is not type(None)]
            if len(args) != 1:
                return ann
            ann = args[0]
        else:
            return ann


def _allowed_keys(loc: tuple[Any, ...]) -> list[str] | None:
    """The keys the section at ``loc`` (a pydantic error location under Params) accepts, or None."""
    ann: Any = Params
    for part in loc:
        ann = _unwrap(ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel) and str(part) in ann.model_fields:
            ann = ann.model_fields[str(part)].annotation
        elif typing.get_origin(ann) in (dict, list):
            ann = typing.get_args(ann)[-1]
        else:
            return None
    ann = _unwrap(ann)
    return sorted(ann.model_fields) if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _error_lines(err: ValidationError, root: bool = False) -> list[str]:
    """One ``key.path: what is wrong (got value)`` line per error. ``root``: locations start at Params."""
    lines = []
    for e in err.errors():
        is_key = bool(e["loc"]) and e["loc"][-1] == "[key]"  # a mapping's key failed (e.g. an unknown task)
        loc = ".".join(str(x) for x in (e["loc"][:-1] if is_key else e["loc"]))
        typ = e["type"]
        if typ == "value_error":  # our validators' messages name the bad value themselves, one error a line;
            msg = e["msg"].removeprefix("Value error, ")  # a line ".key: ..." names a key below loc
            lines += [(loc + m if m.startswith(".") else f"{loc}: {m}") if loc else m.lstrip(".")
                      for m in msg.splitlines()]
            continue
        if typ == "extra_forbidden":
            allowed = _allowed_keys(tuple(e["loc"][:-1])) if root else None
            hint = f"; allowed here: {allowed}" if allowed else "; see params.yaml comments for the allowed keys"
            lines.append(f"{loc}: unknown key (check its spelling{hint})")
            continue
        msg = _MESSAGES.get(typ, e["msg"])
        if typ == "literal_error" and e.get("ctx", {}).get("expected"):
            msg = f"expected one of {e['ctx']['expected']}"
        if isinstance(e.get("input"), bool) and typ in ("string_type", "literal_error"):
            msg += "; YAML reads NO/YES/ON/OFF as booleans: quote the value, e.g. \"NO\""
        got = "" if typ == "missing" else f" (got {_short(e.get('input'))})"
        lines.append(f"{loc}: {'not an allowed key: ' if is_key else ''}{msg}{got}")
    return lines


# ----------------------------------------------------------------------------------------------------------
# Registry checks: every model named anywhere is registered and its hyperparameters match its constructor
# ----------------------------------------------------------------------------------------------------------

#: Where the graphs a task's model reads were built: a model cutoff above it finds no extra edges.
GRAPH_CUTOFF = {t: "catalysis" if t in CATALYSIS else t for t in DATASETS}
_STRICT = ConfigDict(strict=True, allow_inf_nan=False)


class _Constructor:
    """What a registered model's ``__init__`` accepts: names, defaults, and a strict validator per annotation."""

    def __init__(self, cls: type) -> None:
        self.name = f"{cls.__name__}.__init__"
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
        self.var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        named = [p for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                  inspect.Parameter.KEYWORD_ONLY)]
        self.defaults = {p.name: p.default for p in named if p.default is not inspect.Parameter.empty}
        try:
            hints = typing.get_type_hints(cls.__init__)
        except Exception:  # unresolvable annotations: check names only
            hints = {}
        self.types: dict[str, tuple[str, TypeAdapter | None]] = {}
        for p in named:
            hint = hints.get(p.name)
            if hint is None:
                self.types[p.name] = ("any", None)
                continue
            label = getattr(hint, "__name__", None) if isinstance(hint, type) else None
            label = label or str(hint).replace("typing.", "")
            try:
                self.types[p.name] = (label, TypeAdapter(hint, config=_STRICT))
            except Exception:  # a type pydantic cannot validate (a tensor, a callable): not checked
                self.types[p.name] = (label, None)
        self.force_modes = getattr(cls, "force_modes", None)

    def errors(self, where: str, model: str, hparams: dict[str, Any]) -> list[str]:
        out = []
        for key, value in hparams.items():
            if key not in self.types:
                if not self.var_kw:
                    out.append(f"{where}.{key}: model {model!r} has no hyperparameter {key!r}; accepted: "
                               f"{sorted(self.types)}")
                continue
            label, adapter = self.types[key]
            if adapter is None:
                continue
            try:
                adapter.validate_python(value)
            except ValidationError:
                example = f"; e.g. {key}: {self.defaults[key]!r}" if key in self.defaults else ""
                out.append(f"{where}.{key}: {_short(value)} is not a valid {label} ({self.name} takes "
                           f"{key}: {label}){example}")
                continue
            if key == "regress_forces" and self.force_modes is not None and value not in self.force_modes:
                out.append(f"{where}.{key}: {value!r} is not supported by {model!r}; allowed: "
                           f"{list(self.force_modes)}")
        return out


def _registry() -> tuple[list[str], Callable[[str], _Constructor]]:
    from baselines.registry import available_models, get_model_class  # deferred: imports torch

    cache: dict[str, _Constructor] = {}

    def constructor(name: str) -> _Constructor:
        if name not in cache:
            cache[name] = _Constructor(get_model_class(name))
        return cache[name]

    return available_models(), constructor


def model_errors(params: Params) -> list[str]:
    """Every error of the models named in params: registered, hyperparameter names and types accepted by the
    constructor, a cutoff within the dataset's graph cutoff. Imports the registry (torch)."""
    known, constructor = _registry()
    errors = []
    unknown = sorted({c.model for c in params.train_cells.values() if c.model not in known})
    if unknown:
        errors.append(f"train_cells: unknown model(s) {unknown}; registered: {known} "
                      "(a model registers with @register('name') in a file of baselines/)")
    for pname, prof in params.profiles.items():
        at = f"profiles.{pname}"
        for mname, spec in prof.hparams.items():
            if mname not in known:
                errors.append(f"{at}.hparams.{mname}: unknown model; registered: {known}")
                continue
            for section in ("common", *DATASETS):
                errors += constructor(mname).errors(f"{at}.hparams.{mname}.{section}", mname, getattr(spec, section))
        for mname in prof.train.overrides:
            if mname not in known:
                errors.append(f"{at}.train.overrides.{mname}: unknown model; registered: {known}")
        for name in prof.expressivity.models:
            base, _, method = name.partition("-")
            if base not in known or (method and method not in SYMMETRY_METHODS):
                errors.append(f"{at}.expressivity.models: {name!r} is not <model> or <model>-<symmetry>; "
                              f"models: {known}, symmetry: {list(SYMMETRY_METHODS)}")
        for key, hp in prof.expressivity.hparams.items():
            base = key.partition("-")[0]
            if base not in known:
                errors.append(f"{at}.expressivity.hparams.{key}: unknown model; registered: {known}")
            else:
                errors += constructor(base).errors(f"{at}.expressivity.hparams.{key}", base, hp)
        errors += _cutoff_errors(params, pname, prof, known, constructor)
    return errors


def _cutoff_errors(params: Params, pname: str, prof: Profile, known: list[str],
                   constructor: Callable[[str], _Constructor]) -> list[str]:
    """A trained cell whose model cutoff exceeds the cutoff its dataset's graphs were built with."""
    errors, seen = [], set()
    for name, c in params.train_cells.items():
        if c.model not in known or (c.model, c.dataset) in seen or not _selected(prof.train.only, name):
            continue
        seen.add((c.model, c.dataset))
        hp = prof.model_hparams(c.model, c.dataset)
        cut = hp.get("cutoff", constructor(c.model).defaults.get("cutoff"))
        source = GRAPH_CUTOFF[c.dataset]
        graph = getattr(prof.data, source).cutoff
        if isinstance(cut, int | float) and not isinstance(cut, bool) and cut > graph:
            where = "cutoff" if "cutoff" in hp else "cutoff (the constructor's default)"
            errors.append(f"profiles.{pname}.hparams.{c.model} ({c.dataset}): {where} {cut} Å exceeds "
                          f"profiles.{pname}.data.{source}.cutoff {graph} Å, the radius {c.dataset}'s graphs are "
                          f"built with; set the model's cutoff <= {graph} or raise data.{source}.cutoff")
    return errors


def validate_models(params: Params) -> None:
    """``model_errors`` as a ConfigError (stages that build models call it before any work)."""
    errors = model_errors(params)
    if errors:
        raise ConfigError([f"params.yaml: {e}" for e in errors])


def parse_params(raw: Any, check_models: bool = True, source: str = "params.yaml") -> Params:
    """Validate a params mapping; raise ConfigError with one line per error, each naming its key path.

    ``check_models=False`` skips the registry checks (they import torch): for stages that only need to
    know whether they have work to do.
    """
    if raw is None:
        raise ConfigError(f"{source}: the file is empty; it needs the keys profile, train_cells and profiles")
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with the keys profile, train_cells and "
                          f"profiles, got a {type(raw).__name__}")
    try:
        params = Params(**raw)
    except ValidationError as err:
        raise ConfigError([f"{source}: {line}" for line in _error_lines(err, root=True)]) from None
    if check_models:
        errors = model_errors(params)
        if errors:
            raise ConfigError([f"{source}: {e}" for e in errors])
    return params


def load_params(path: Path | str = PARAMS_PATH, check_models: bool = True) -> Params:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} not found: run from the repository root (where params.yaml lives)")
    # Messages name the repository's file as "params.yaml", any other file by its path.
    source = "params.yaml" if path.resolve() == PARAMS_PATH.resolve() else str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{source}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else source
        what = ", ".join(str(x) for x in (getattr(err, "context", None), getattr(err, "problem", None)) if x)
        raise ConfigError(f"{where}: not valid YAML: {what or str(err).splitlines()[0]}") from None
    return parse_params(raw, check_models=check_models, source=source)


def stage_main(body: Callable[[Params], int], check_models: bool = True,
               path: Path | str = PARAMS_PATH) -> int:
    """Every stage's ``main()``: load and validate params, run ``body(params)``; a ConfigError (from loading
    or raised by the body) is printed one error a line, without a traceback, and returns 2."""
    try:
        params = load_params(path, check_models=check_models)
        return body(params)
    except ConfigError as err:
        for line in err.errors:
            print(f"error: {line}", file=sys.stderr)
        return 2


def params_hash(params: Params) -> str:
    """A short hash of the validated params (for provenance records)."""
    blob = json.dumps(params.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def digest(obj: Any) -> str:
    """A short, stable hash of a JSON-serialisable value (checkpoint and cache keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


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


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.config [--stamp FILE]``: validate params.yaml (registry checks included); with
    ``--stamp``, write the constant VALIDATED_STAMP there on success (the DVC stage ``validate``)."""
    import argparse

    ap = argparse.ArgumentParser(description="Validate params.yaml before any work.")
    ap.add_argument("--params", default=str(PARAMS_PATH), help="params file (default: the repository's)")
    ap.add_argument("--stamp", type=Path, help="write the constant validation stamp here on success")
    args = ap.parse_args(argv)

    def report(p: Params) -> int:
        print(f"{Path(args.params).name}: OK (profile {p.profile}, {len(p.trained_cells())} cells)")
        if args.stamp is not None:
            args.stamp.parent.mkdir(parents=True, exist_ok=True)
            args.stamp.write_text(json.dumps(VALIDATED_STAMP, indent=2) + "\n")
        return 0

    return stage_main(report, path=args.params)


if __name__ == "__main__":
    sys.exit(main())
