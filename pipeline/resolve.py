"""A train cell -> a run: the one place that turns a (model, dataset, symmetry method) of ``params.yaml`` into
the model's constructor arguments, its force mode, the graph rewiring, the symmetry wrapper's frame dimension,
the training settings, the eval splits, the cell's seeds and targets, and a run's MLflow params and tags.

Every stage that builds a model from a cell (train, ablation, symmetry's No-Train row, benchmark) calls
``resolve_cell`` (and ``resolve_run`` for a run the stage trains); none re-derives any of it. Where a stage
legitimately differs, it says so through an argument, never through its own rule:

- ``profile``: the profile whose ``hparams`` and ``train`` resolve the cell (default: the active one); the
  benchmark measures the models at ``profile="paper"`` too;
- ``hparam_base``: constructor arguments under the profile's (the ablation: the paper profile's FAENet IS2RE
  hyperparameters, ``profiles.paper.hparams.faenet.is2re``, so that its Table 6 switches change something);
- ``table6_row``: a Table 6 row whose switches go over the profile's (``faenet.model.table6_hparams``);
- ``epochs``: replaces the task's ``epochs`` (the ablation shortens its trainings);
- ``eval_splits``: a subset of the task's splits (the ablation evaluates the four val splits, not test).

The expressivity stage trains no cell (synthetic pairs, its own ``expressivity.hparams`` section and
protocol), so it does not come here.

Model hyperparameters, later wins:

1. ``hparam_base`` (default none: the constructor's defaults);
2. ``profiles.<profile>.hparams.<model>.common``;
3. ``profiles.<profile>.hparams.<model>.<task>``;
4. ``table6_row``'s switches;
5. ``regress_forces`` = the force mode, always set here.

Training settings: ``profiles.<profile>.train.<task>``, then ``train.overrides.<model>.<task>``
(``TrainConfig.for_run``), then ``epochs``; the seed and ``train.eval_batch_size`` added per run.

Force mode, one rule: a task with force targets (``FORCE_TASKS``) trains with the settings' ``regress_forces``
(after the overrides), which must name a mode; any other task predicts energies only (``""``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import (
    CATALYSIS,
    DATASETS,
    EVAL_SPLITS,
    FORCE_TASKS,
    FRAME_DIM,
    SYMMETRY_METHODS,
    ConfigError,
    Params,
    TaskTrainConfig,
    cell_name,
    flatten,
    params_hash,
)
from pipeline.runs import RunSpec


@dataclass(frozen=True)
class ResolvedCell:
    """Everything a (model, task, symmetry method) trains with, at one profile."""

    model: str
    task: str
    symmetry: str
    profile: str  # the profile whose hparams and train settings these are
    hparams: dict[str, Any]  # constructor arguments, ``regress_forces`` included
    train: TaskTrainConfig  # the task's settings after the overrides (and ``epochs``)
    force_mode: str  # = hparams["regress_forces"]; "" for energy-only tasks
    frame_dim: int  # 2: frames in the xy plane (OC20 slabs); 3: full E(3)
    eval_splits: tuple[str, ...]  # the first drives the schedulers
    seeds: tuple[int, ...]
    targets: tuple[str, ...]  # ("energy",), or the QM9 properties (one model each)
    eval_batch_size: int
    data: dict[str, Any] = field(default_factory=dict)  # the task's data section (logged as ``data.*``)
    table6_row: str | None = None

    @property
    def name(self) -> str:
        return cell_name(self.model, self.task, self.symmetry)

    @property
    def needs_forces(self) -> bool:
        return self.task in FORCE_TASKS

    @property
    def rewiring(self) -> str:
        return self.train.rewiring

    def settings(self, seed: int):
        """The ``faenet.training.TrainSettings`` of one seed."""
        from faenet.training import TrainSettings

        fields = set(TrainSettings.__dataclass_fields__)
        return TrainSettings(seed=seed, eval_batch_size=self.eval_batch_size,
                             **{k: v for k, v in self.train.model_dump().items() if k in fields})


def force_mode(params: Params, model: str, task: str, profile: str | None = None) -> str:
    """``regress_forces`` of ``model`` on ``task`` (module docstring: one rule)."""
    pname = profile or params.profile
    if task not in FORCE_TASKS:
        return ""
    mode = _profile(params, pname).train.for_run(model, task).regress_forces
    if not mode:
        raise ConfigError(f"profiles.{pname}.train.{task}.regress_forces (or train.overrides.{model}.{task}) is "
                          f"empty, but {task} has force targets; set direct, from_energy or "
                          "direct_with_gradient_target")
    return mode


def resolve_cell(params: Params, model: str, task: str, symmetry: str, *, profile: str | None = None,
                 hparam_base: Mapping[str, Any] | None = None, table6_row: str | None = None,
                 epochs: int | None = None, eval_splits: Sequence[str] | None = None) -> ResolvedCell:
    """The cell ``model``-``task``-``symmetry`` at ``profile`` (default: the active one); the keyword arguments
    are the stages' documented departures (module docstring). ``ConfigError`` names the bad key."""
    pname = profile or params.profile
    prof = _profile(params, pname)
    if task not in DATASETS:
        raise ConfigError(f"unknown dataset {task!r}; allowed: {list(DATASETS)}")
    if symmetry not in SYMMETRY_METHODS:
        raise ConfigError(f"unknown symmetry method {symmetry!r}; allowed: {list(SYMMETRY_METHODS)}")
    try:
        tcfg = prof.train.for_run(model, task)
    except ValueError as err:
        raise ConfigError(f"profiles.{pname}.{err}") from None
    if epochs is not None:
        tcfg = tcfg.model_copy(update={"epochs": epochs})
    hparams = {**(hparam_base or {}), **prof.model_hparams(model, task)}
    if table6_row is not None:
        hparams = _table6(hparams, model, table6_row, pname)
    mode = force_mode(params, model, task, pname)
    hparams["regress_forces"] = mode
    if table6_row is not None:  # profile hparams are checked with params.yaml; a row's switches only here
        _check_row(hparams, table6_row, pname)
    splits = tuple(EVAL_SPLITS[task])
    if eval_splits is not None:
        unknown = [s for s in eval_splits if s not in splits]
        if unknown:
            raise ConfigError(f"eval splits {unknown} are not splits of {task}; its splits: {list(splits)}")
        splits = tuple(eval_splits)
    return ResolvedCell(
        model=model, task=task, symmetry=symmetry, profile=pname, hparams=hparams, train=tcfg, force_mode=mode,
        frame_dim=FRAME_DIM[task], eval_splits=splits, seeds=tuple(prof.train.seeds_for(model, task)),
        targets=tuple(tcfg.targets) if task == "qm9" else ("energy",), eval_batch_size=prof.train.eval_batch_size,
        data=getattr(prof.data, "catalysis" if task in CATALYSIS else task).model_dump(mode="json"),
        table6_row=table6_row)


def resolve_run(params: Params, cell: ResolvedCell | str, seed: int, target: str = "energy", *, data_hash: str,
                folder: str | None = None, run_name: str = "", stage: str | None = None,
                extra_key: Mapping[str, Any] | None = None, extra_params: Mapping[str, Any] | None = None,
                extra_tags: Mapping[str, str] | None = None, extra_config: Mapping[str, Any] | None = None,
                provenance_tags: Mapping[str, str] | None = None) -> RunSpec:
    """The ``RunSpec`` of one seed and target of ``cell`` (a ``ResolvedCell``, or a ``train_cells`` name).

    Filing and labels: ``folder`` under ``work/`` (default the cell's name), ``run_name`` (default
    ``<folder>-<tag>``), ``stage`` = the DVC stage (default ``train@<cell>``; the ``cell`` tag is set only for
    the train stage's runs, so an MLflow search by cell finds those). ``extra_key``: anything else the run
    depends on (e.g. a training subset; it changes the run's key); ``extra_params`` / ``extra_tags`` /
    ``extra_config``: what the stage adds to the MLflow params, tags and ``resolved_config.json``.
    ``provenance_tags``: git/versions tags computed once by the caller (default: computed here).
    """
    if isinstance(cell, str):
        if cell not in params.train_cells:
            raise ConfigError(f"train_cells has no {cell!r}; cells: {sorted(params.train_cells)}")
        c = params.train_cells[cell]
        cell = resolve_cell(params, c.model, c.dataset, c.symmetry)
    if target not in cell.targets:
        raise ConfigError(f"{cell.name}: target {target!r} is not one of the cell's targets {list(cell.targets)}")
    if provenance_tags is None:
        provenance_tags = run_provenance_tags()
    tcfg = cell.train.model_dump()
    run_params = {**flatten(tcfg, "train."), **flatten(cell.hparams, "model."), "model": cell.model,
                  "dataset": cell.task, "symmetry": cell.symmetry, "seed": seed, "target": target,
                  "profile": cell.profile, "rewiring": cell.rewiring, **flatten(cell.data, "data."),
                  **(extra_params or {})}
    tags = {**provenance_tags, "dvc_stage": stage or f"train@{cell.name}", "dataset_hash": data_hash,
            "profile": cell.profile, "params_hash": params_hash(params),
            **({"cell": cell.name} if stage is None else {}), **(extra_tags or {})}
    config = {"train": tcfg, "model": cell.hparams, "profile": cell.profile, "symmetry": cell.symmetry,
              "target": target, **(extra_config or {})}
    return RunSpec(model_name=cell.model, hparams=cell.hparams, symmetry=cell.symmetry, task=cell.task, seed=seed,
                   settings=cell.settings(seed), data_hash=data_hash, folder=folder or cell.name, target=target,
                   run_name=run_name, rewiring=cell.rewiring, frame_dim=cell.frame_dim, run_params=run_params,
                   tags=tags, config=config, extra_key=dict(extra_key or {}),
                   device=_profile(params, cell.profile).train.device,
                   amp=_profile(params, cell.profile).train.amp,
                   num_workers=_profile(params, cell.profile).train.num_workers,
                   balance_ranks=_profile(params, cell.profile).train.balance_ranks,
                   stream=_profile(params, cell.profile).train.stream)


def run_provenance_tags() -> dict[str, str]:
    """The string-valued provenance (git commit, dirty flag) every run is tagged with."""
    from pipeline.tracking import provenance

    return {k: v for k, v in provenance().items() if isinstance(v, str)}


def _profile(params: Params, name: str):
    if name not in params.profiles:
        raise ConfigError(f"profile {name!r} is not defined; profiles: {sorted(params.profiles)}")
    return params.profiles[name]


def _table6(hparams: dict[str, Any], model: str, row: str, pname: str) -> dict[str, Any]:
    from faenet.model import TABLE6_ABLATIONS, table6_hparams

    if model != "faenet":
        raise ConfigError(f"Table 6 rows are FAENet ablations; got model {model!r}")
    if row not in TABLE6_ABLATIONS:
        raise ConfigError(f"profiles.{pname}.ablation.variants: unknown row {row!r}; Table 6 rows: "
                          f"{list(TABLE6_ABLATIONS)}")
    return table6_hparams(hparams, row)


def _check_row(hparams: dict[str, Any], row: str, pname: str) -> None:
    from baselines.registry import check_hparams

    try:
        check_hparams("faenet", hparams)
    except ValueError as err:
        raise ConfigError(f"Table 6 row {row!r} on profiles.{pname}.hparams.faenet: {err}") from None
