"""Stage `expressivity` (App. B.2, Tables 3-5): can a model tell the two graphs of a geometric-gnn-dojo pair apart?

Experiments (pairs and protocol in ``faenet.expressivity``), for every model of ``expressivity.models``
(``<model>`` or ``<model>-<symmetry>``, e.g. ``faenet-sfa``; every model inside ``faenet.symmetry``'s
``SymmetryWrapper`` with 3D frames):

- Table 3: the k-chain pair (k = ``kchain_k``) for each number of interaction layers in ``kchain_layers``;
- Table 4: the rotationally symmetric stars of ``folds`` (second graph rotated by 2π / (fold + ``rotsym_r``));
- Table 5: the 2/3/4-body counterexamples of ``body_pairs`` (``4body_chiral`` is the paper's "4-body").
Tables 4 and 5 use ``pair_layers`` (the dojo: 1) interaction layers.

Training (the dojo's): binary classification of the pair, Adam at ``lr`` with ReduceLROnPlateau on the val
accuracy, ``epochs`` epochs of batch-1 steps, val = test = the pair; a seed's accuracy is that of the last
epoch whose val accuracy was >= the best so far. Seeds 0..``n_seeds``-1; mean ± POPULATION std (ddof 0, the
dojo's ``np.std``). Clean protocol: a fresh model per seed, initialised in a RNG seeded with the seed. The
dojo instead builds ONE model (unseeded) before its seed loop and keeps training it across all 10 seeds, so
its runs 2..10 start from the previous run's weights; ``reuse_model: true`` reproduces that bug
(``faenet.expressivity.run_pair_experiment(reuse_model=True)``).

Both protocols evaluate the SAME trained models:

- ``paper``: the fixed coordinates as built (the dojo). Stochastic models (SFA) are evaluated ``paper_draws``
  times and averaged; the dojo evaluates once, so its number is one draw of that average.
- ``strict``: every evaluation graph is first moved by its own random E(3) transform (Haar on O(3), Gaussian
  translation of 5 Å std), ``strict_transforms`` draws per graph. An E(3)-invariant model gives congruent
  graphs identical outputs, so it can only separate pairs that are NOT congruent. The congruence of every
  pair is computed (``pair_congruence``: exact search for a permutation + isometry) and printed, with what
  frame averaging sees (``frame_report``: PCA eigengaps, and whether both graphs yield the same set of
  frame-projected inputs, in which case FA/SFA cannot beat chance whatever the backbone).

Execution: experiments (model, pair, layers), each with all its seeds, run in a pool of ``workers`` processes
(fork where available, so the parent's warmed caches, e.g. DimeNet++'s sympy basis, are inherited), one
torch thread each, longest first. Every experiment seeds itself: results do not depend on worker count/order.

Outputs: ``reports/tables/table{3,4,5}.{md,csv}`` (``pipeline.expressivity_tables``), the full results
``results/expressivity.json`` and their headline, the DVC metric ``metrics/expressivity.json`` (``headline``),
one MLflow run per (model, experiment) (``MlflowLogger``: per-seed accuracies ``acc_paper`` / ``acc_strict``
and ``best_epoch`` with step = seed, their mean/std), logged as results arrive;
flat runs rather than nested ones, grouped by the tag ``stage_run`` shared by one stage execution, so that
each run stands alone in MLflow's search (``tags.stage_run = '...' and params.model = 'faenet'``).

``results/expressivity.json`` (``schema_version`` 1); accuracies in %:

    {
      "schema_version": 1, "profile": str,
      "table3": {"<model>": {"<layers>": CELL}},   # pair "kchain_<k>"
      "table4": {"<model>": {"<fold>": CELL}},     # pair "rotsym_<fold>", pair_layers layers
      "table5": {"<model>": {"<pair>": CELL}},     # pair in body_pairs ("2body", "3body", "4body_chiral",
                                                   #   "4body_nonchiral"), pair_layers layers
      "congruence": {"<pair>": {"E3": bool, "SE3": bool}},
      "frames": {"<pair>": {"eigengap": [g0, g1], "degenerate": [bool, bool],
                            "inputs_match": {"E3": bool, "SE3": bool}}},
      "pairs": {"<pair>": {"table": str, "nodes": int, "note": str}},
      "models": {"<model>": {"base": str, "symmetry": str, "group": "E3" | "SE3", "invariance": str,
                             "stochastic": bool,
                             "hparams": {...}, "layer_argument": str}},   # hparams at 1 layer
      "config": {ExpressivityConfig fields}, "protocol": {fixed protocol settings, in words and numbers},
      "workers": int, "seconds": {"experiments_and_mlflow": float, "mlflow": float, "total": float,
                                  "cpu_experiments": float},
      "provenance": {git, packages, machine}
    }
    CELL = {"pair": str, "layers": int, "model": str,
            "paper":  {"mean": float, "std": float, "per_seed": [float]},   # ours, paper protocol
            "strict": {"mean": float, "std": float, "per_seed": [float]},   # ours, strict protocol
            "reported": {"mean": float, "std": float | null} | null,        # the paper's value (pipeline/paper.yaml)
            "best_epoch": [int], "best_val_acc": [float], "final_loss": [float],   # per seed; epoch 0-based
            "n_params": int, "seconds": float, "mlflow_run_id": str | null}

``models.<m>.invariance`` is what the model is by construction: ``"E(3)-invariant"`` (SchNet, DimeNet++),
``"FA: E(3)-invariant if frames are well defined"``, ``"SFA: E(3)-invariant in distribution if frames are
well defined"`` (SE(3) for the ``se3-`` methods, ``group``), or ``"none (lab frame)"`` (DA is off at
evaluation).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import ROOT, ConfigError, ExpressivityConfig, Params, flatten, params_hash, stage_main
from pipeline.tables import TABLES, mean_std, paper_row
from pipeline.tracking import provenance, write_json

RESULTS = ROOT / "results" / "expressivity.json"
HEADLINE = ROOT / "metrics" / "expressivity.json"
SCHEMA_VERSION = 1
#: Constructor argument that sets the number of interaction layers; other models: the first of LAYER_NAMES
#: their constructor accepts.
LAYER_ARG = {"faenet": "num_interactions", "schnet": "num_interactions", "forcenet": "num_interactions",
             "dimenet_pp": "num_blocks"}
LAYER_NAMES = ("num_interactions", "num_blocks", "num_layers")
#: Models whose outputs use only invariant scalars (distances; DimeNet++ also angles).
INVARIANT_BASES = ("schnet", "dimenet_pp")
#: Relative cost per layer of one experiment, to start the long ones first (measured on 2 CPU cores).
COST = {"dimenet_pp": 3.0, "forcenet": 2.0, "full": 2.0}


@dataclass(frozen=True)
class Experiment:
    """One cell of Tables 3-5: ``model`` trained on ``pair`` with ``layers`` layers; ``column`` its column."""

    table: str
    model: str
    pair: str
    layers: int
    column: str

    @property
    def name(self) -> str:
        return f"{self.model}-{self.pair}-L{self.layers}"


def split_model(name: str) -> tuple[str, str]:
    """``"faenet-sfa"`` -> ``("faenet", "sfa")``; ``"schnet"`` -> ``("schnet", "none")``."""
    base, _, method = name.partition("-")
    return base, method or "none"


def is_stochastic(name: str) -> bool:
    """SFA draws a frame per forward pass, also at evaluation; DA is off at evaluation."""
    return split_model(name)[1].endswith("sfa")


def symmetry_group(name: str) -> str:
    """``"SE3"`` for the SE(3) frame methods (``se3-sfa``, ``se3-full``), else ``"E3"``."""
    return "SE3" if split_model(name)[1].startswith("se3-") else "E3"


def invariance(name: str) -> str:
    """What the model is by construction (see the schema in the module docstring)."""
    base, method = split_model(name)
    group = "SE(3)" if symmetry_group(name) == "SE3" else "E(3)"
    if method.endswith("full"):
        return f"FA: {group}-invariant if frames are well defined"
    if method.endswith("sfa"):
        return f"SFA: {group}-invariant in distribution if frames are well defined"
    if base in INVARIANT_BASES:
        return "E(3)-invariant"
    return "none (lab frame)"


def plan(cfg: ExpressivityConfig) -> list[Experiment]:
    """Every experiment of the three tables, in table / model / column order."""
    out = []
    for model in cfg.models:
        out += [Experiment("table3", model, f"kchain_{cfg.kchain_k}", n, str(n)) for n in cfg.kchain_layers]
    for model in cfg.models:
        out += [Experiment("table4", model, f"rotsym_{f}", cfg.pair_layers, str(f)) for f in cfg.folds]
    for model in cfg.models:
        out += [Experiment("table5", model, p, cfg.pair_layers, p) for p in cfg.body_pairs]
    return out


def build_pair(name: str, cfg: ExpressivityConfig):
    """The dojo pair called ``name`` (``kchain_<k>``, ``rotsym_<fold>``, or a ``body_pairs`` entry)."""
    from faenet import expressivity as ex

    kind, _, arg = name.partition("_")
    if kind == "kchain":
        return ex.k_chain_pair(int(arg))
    if kind == "rotsym":
        return ex.rotsym_pair(int(arg), r=cfg.rotsym_r)
    makers = {"2body": ex.two_body_pair, "3body": ex.three_body_pair, "4body_chiral": ex.four_body_chiral_pair,
              "4body_nonchiral": ex.four_body_nonchiral_pair}
    if name not in makers:
        raise ConfigError(f"expressivity: unknown pair {name!r}; known: kchain_<k>, rotsym_<fold>, {sorted(makers)}")
    return makers[name]()


def layer_argument(base: str) -> str:
    from baselines.registry import accepted_hparams

    if base in LAYER_ARG:
        return LAYER_ARG[base]
    accepted = accepted_hparams(base) or []
    for arg in LAYER_NAMES:
        if arg in accepted:
            return arg
    raise ConfigError(f"expressivity.models: cannot tell which hyperparameter of {base!r} sets its number of "
                      f"layers (none of {list(LAYER_NAMES)}); add it to LAYER_ARG in pipeline/expressivity.py")


def resolved_hparams(cfg: ExpressivityConfig, model: str, layers: int, max_edge: float = 0.0) -> dict[str, Any]:
    """Constructor arguments of ``model`` with ``layers`` layers: the dojo cutoff (10 Å) unless given,
    ``hparams[base]`` then ``hparams[model]``, the layer argument, no force head. ``ConfigError`` names the
    bad key; ``max_edge`` (Å): the longest edge of the pairs, which the cutoff must keep."""
    from baselines.registry import check_hparams
    from faenet.expressivity import DOJO_CUTOFF

    base, _ = split_model(model)
    hp = {"cutoff": DOJO_CUTOFF, **cfg.hparams.get(base, {}), **(cfg.hparams.get(model, {}) if model != base else {})}
    arg = layer_argument(base)
    for key, why in ((arg, "the stage sets it from kchain_layers (Table 3) and pair_layers (Tables 4-5)"),
                     ("regress_forces", "the pairs are classified from the energy head only")):
        if key in hp:
            raise ConfigError(f"expressivity.hparams.{base}.{key}: {why}; remove it")
    hp[arg] = layers
    hp["regress_forces"] = ""
    try:
        check_hparams(base, hp)
    except ValueError as err:
        raise ConfigError(f"expressivity.hparams.{base}: {err}") from None
    if float(hp["cutoff"]) < max_edge:
        raise ConfigError(f"expressivity.hparams.{base}.cutoff={hp['cutoff']} Å drops edges of the dojo pairs "
                          f"(longest {max_edge:.2f} Å); use >= {max_edge:.1f} (the dojo's is 10)")
    return hp


def _max_edge(pairs: dict[str, Any]) -> float:
    best = 0.0
    for p in pairs.values():
        for g in p.graphs:
            src, dst = g.edge_index
            best = max(best, float((g.pos[src] - g.pos[dst]).norm(dim=1).max()))
    return best


def model_factory(model: str, hparams: dict[str, Any]) -> Callable[[], Any]:
    """Zero-argument builder of ``SymmetryWrapper(build_model(base, **hparams), symmetry, frame_dim=3)``."""
    from baselines.registry import build_model
    from faenet.symmetry import SymmetryWrapper

    base, method = split_model(model)

    def factory():
        return SymmetryWrapper(build_model(base, **hparams), method, frame_dim=3)

    return factory


def run_experiment(exp: Experiment, cfg: ExpressivityConfig, device: str = "cpu") -> dict[str, Any]:
    """Train ``exp`` once per seed and evaluate both protocols (``faenet.expressivity.run_pair_experiment``) on
    ``device`` (``train.device``; resolved here, in the worker that computes)."""
    from faenet.device import resolve_device
    from faenet.expressivity import run_pair_experiment

    t0, c0 = time.perf_counter(), time.process_time()
    pair = build_pair(exp.pair, cfg)
    hp = resolved_hparams(cfg, exp.model, exp.layers)
    factory = model_factory(exp.model, hp)
    n_params = sum(p.numel() for p in factory().parameters())
    res = run_pair_experiment(factory, pair, seeds=tuple(range(cfg.n_seeds)), reuse_model=cfg.reuse_model,
                              n_draws=cfg.paper_draws if is_stochastic(exp.model) else 1,
                              n_strict_draws=cfg.strict_transforms, epochs=cfg.epochs, lr=cfg.lr,
                              device=resolve_device(device))
    return {"paper": res.accuracies["paper"], "strict": res.accuracies["strict"],
            "best_epoch": [h.best_epoch for h in res.histories],
            "best_val_acc": [h.best_val_acc for h in res.histories],
            "final_loss": [h.loss[-1] for h in res.histories], "n_params": n_params,
            "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}


def _cost(exp: Experiment) -> float:
    base, method = split_model(exp.model)
    return COST.get(base, 1.0) * COST.get(method, 1.0) * exp.layers


def _job(args: tuple[Experiment, ExpressivityConfig, str]) -> tuple[str, dict[str, Any]]:
    exp, cfg, device = args
    return exp.name, run_experiment(exp, cfg, device)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _warm_caches(cfg: ExpressivityConfig) -> None:
    """Build each model once so per-process caches (DimeNet++'s sympy basis, ~5-15 s) exist before forking."""
    for model in cfg.models:
        model_factory(model, resolved_hparams(cfg, model, 1))()


def run_experiments(cfg: ExpressivityConfig, experiments: list[Experiment], progress: bool = True,
                    on_result: Callable[[Experiment, dict[str, Any]], None] | None = None,
                    device: str = "cpu") -> dict[str, dict[str, Any]]:
    """``{experiment name: result}`` of every experiment, on ``cfg.workers`` processes (1 = this process), each
    on one torch thread (tiny graphs: intra-op threads only add contention between the workers).

    ``on_result(experiment, result)`` is called in this process as each result arrives (MLflow logging then
    overlaps the remaining experiments).
    """
    from faenet.procs import run_pool

    jobs = sorted(experiments, key=lambda e: (-_cost(e), e.name))
    workers = min(cfg.workers, len(jobs))
    if workers > 1 and "fork" in mp.get_all_start_methods():
        with _one_thread():  # forked workers inherit the caches
            _warm_caches(cfg)
    by_name = {e.name: e for e in jobs}
    results: dict[str, dict[str, Any]] = {}
    desc = (f"expressivity ({workers} workers)" if workers > 1 else "expressivity") if progress else None
    for _, (name, res) in run_pool(_job, [(e, cfg, device) for e in jobs], workers, threads=1, start_method="fork",
                                   ordered=False, desc=desc, unit="exp", label=lambda job: job[0].name):
        results[name] = res
        if on_result is not None:
            on_result(by_name[name], res)
    return {e.name: results[e.name] for e in experiments}


def pair_facts(cfg: ExpressivityConfig, experiments: list[Experiment]) -> dict[str, dict[str, Any]]:
    """``congruence``, ``frames`` and ``pairs`` sections of the metrics, for every pair of ``experiments``."""
    from faenet.expressivity import frame_report, pair_congruence

    facts: dict[str, dict[str, Any]] = {"congruence": {}, "frames": {}, "pairs": {}}
    for exp in experiments:
        if exp.pair in facts["pairs"]:
            continue
        pair = build_pair(exp.pair, cfg)
        facts["congruence"][exp.pair] = pair_congruence(pair)
        facts["frames"][exp.pair] = frame_report(pair)
        facts["pairs"][exp.pair] = {"table": exp.table, "nodes": int(pair.graphs[0].natoms), "note": pair.note}
    return facts


def reported(table: str, model: str, column: str) -> dict[str, Any] | None:
    """The paper's value of a cell (``pipeline/paper.yaml``), or None if the paper has no such cell."""
    row = paper_row(table, model)
    means, stds = row.get("mean", {}), row.get("std", {}) or {}
    key = int(column) if column.isdigit() else column
    if key not in means:
        return None
    return {"mean": float(means[key]), "std": None if key not in stds else float(stds[key])}


class MlflowLogger:
    """``logger(experiment, result)``: one MLflow run per experiment; run ids in ``.ids``, seconds in ``.seconds``.

    Runs carry the per-seed accuracies ``acc_paper`` / ``acc_strict`` and ``best_epoch`` (step = seed), their
    mean/std, the resolved hyperparameters and pair facts as params, and the tag ``stage_run`` shared by every
    run of one stage execution.
    """

    def __init__(self, cfg: ExpressivityConfig, facts: dict[str, dict[str, Any]], tags: dict[str, str],
                 profile: str) -> None:
        self.cfg, self.facts, self.profile = cfg, facts, profile
        self.tags = {**tags, "dvc_stage": "expressivity", "stage_run": uuid.uuid4().hex[:12]}
        self.ids: dict[str, str] = {}
        self.seconds = 0.0

    def __call__(self, exp: Experiment, r: dict[str, Any]) -> None:
        from pipeline.tracking import log_finished_run

        t0 = time.perf_counter()
        facts = self.facts
        params = {"table": exp.table, "model": exp.model, "pair": exp.pair, "layers": exp.layers,
                  "profile": self.profile, "n_params": r["n_params"],
                  **{f"congruent_{k}": v for k, v in facts["congruence"][exp.pair].items()},
                  "frame_inputs_match_E3": facts["frames"][exp.pair]["inputs_match"]["E3"],
                  **flatten(self.cfg.model_dump(exclude={"hparams", "models"}), "expressivity."),
                  **flatten(resolved_hparams(self.cfg, exp.model, exp.layers), "model.")}
        per_seed = [{"step": seed, "acc_paper": paper, "acc_strict": strict, "best_epoch": best}
                    for seed, (paper, strict, best) in enumerate(zip(r["paper"], r["strict"], r["best_epoch"],
                                                                     strict=True))]
        summary = {f"acc_{p}_{k}": mean_std(r[p], ddof=0)[k] for p in ("paper", "strict") for k in ("mean", "std")}
        self.ids[exp.name] = log_finished_run(f"expressivity-{exp.name}", params, {**self.tags, "table": exp.table},
                                              metrics=summary, history=per_seed)
        self.seconds += time.perf_counter() - t0


PROTOCOL = {
    "optimizer": "Adam (torch fused kernel), no weight decay",
    "scheduler": "ReduceLROnPlateau(mode=max, factor=0.9, patience=25, min_lr=1e-5) on val accuracy",
    "steps_per_epoch": "2 (batch 1, the two graphs shuffled)",
    "selection": "accuracy at the last epoch whose val accuracy >= best so far (val = test = the pair)",
    "std": "population (ddof=0), as the dojo's np.std",
    "seeds": "0..n_seeds-1; a fresh model per seed unless reuse_model",
    "strict_transform": "per graph and draw: Haar O(3) rotation/reflection + Gaussian translation, std 5 Å",
    "eval_seed": 12345, "dtype": "float32", "edges": "the dojo's hand-written edge lists (undirected)",
    "node_species": "one (carbon, Z = 6), the dojo's single node type", "frame_dim": 3,
}


def build_metrics(cfg: ExpressivityConfig, experiments: list[Experiment], results: dict[str, dict[str, Any]],
                  facts: dict[str, dict[str, Any]], run_ids: dict[str, str], profile: str) -> dict[str, Any]:
    """The ``results/expressivity.json`` document (schema in the module docstring), without timings."""
    out: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "profile": profile,
                           "table3": {}, "table4": {}, "table5": {}, **facts}
    for exp in experiments:
        r = results[exp.name]
        out[exp.table].setdefault(exp.model, {})[exp.column] = {
            "pair": exp.pair, "layers": exp.layers, "model": exp.model,
            "paper": mean_std(r["paper"], ddof=0), "strict": mean_std(r["strict"], ddof=0),
            "reported": reported(exp.table, exp.model, exp.column),
            "best_epoch": r["best_epoch"], "best_val_acc": r["best_val_acc"], "final_loss": r["final_loss"],
            "n_params": r["n_params"], "seconds": round(r["seconds"], 2), "mlflow_run_id": run_ids.get(exp.name)}
    out["models"] = {m: {"base": split_model(m)[0], "symmetry": split_model(m)[1], "group": symmetry_group(m),
                         "invariance": invariance(m),
                         "stochastic": is_stochastic(m), "hparams": resolved_hparams(cfg, m, 1),
                         "layer_argument": layer_argument(split_model(m)[0])} for m in cfg.models}
    out["config"] = cfg.model_dump(mode="json")
    out["protocol"] = {**PROTOCOL, "lr": cfg.lr, "epochs": cfg.epochs, "n_seeds": cfg.n_seeds,
                       "strict_transforms": cfg.strict_transforms, "paper_draws_stochastic": cfg.paper_draws,
                       "reuse_model": cfg.reuse_model}
    return out


def run_stage(cfg: ExpressivityConfig, *, profile: str, tables_dir: Path = TABLES, results_path: Path = RESULTS,
              headline_path: Path = HEADLINE, track: bool = True, tags: dict[str, str] | None = None,
              progress: bool = True, device: str = "cpu") -> dict[str, Any]:
    """Run every experiment on ``device`` (a ``train.device`` string), log MLflow (``track``), write the results
    JSON, its headline and Tables 3-5; returns the results."""
    from pipeline.expressivity_tables import write_expressivity_tables

    t0 = time.perf_counter()
    experiments = plan(cfg)
    pairs = {e.pair: build_pair(e.pair, cfg) for e in experiments}
    longest = _max_edge(pairs)
    for model in cfg.models:  # every configuration error before any training
        for layers in sorted({e.layers for e in experiments}):
            resolved_hparams(cfg, model, layers, max_edge=longest)
    facts = pair_facts(cfg, experiments)
    logger = MlflowLogger(cfg, facts, tags or {}, profile) if track else None
    results = run_experiments(cfg, experiments, progress, on_result=logger, device=device)
    run_ids = logger.ids if logger else {}
    metrics = build_metrics(cfg, experiments, results, facts, run_ids, profile)
    metrics["workers"] = min(cfg.workers, len(experiments))
    metrics["seconds"] = {"experiments_and_mlflow": round(time.perf_counter() - t0, 1),
                          "mlflow": round(logger.seconds if logger else 0.0, 1),
                          "total": round(time.perf_counter() - t0, 1),
                          "cpu_experiments": round(sum(r["cpu_seconds"] for r in results.values()), 1)}
    metrics["provenance"] = provenance()
    write_json(results_path, metrics)
    write_json(headline_path, headline(metrics))
    write_expressivity_tables(metrics, tables_dir)
    return metrics


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The stage's DVC metric from its full results: per table, the number of cells, how many the paper reports
    and the fraction of those where ours (paper protocol) prints as the paper's value (``mean ± std`` at one
    decimal, as Tables 3-5 compare them); per model and table, the separation rate: the fraction of
    (cell, seed) runs at 100% accuracy under the paper protocol."""
    from pipeline.expressivity_tables import fmt_acc

    tables: dict[str, Any] = {}
    models: dict[str, dict[str, float]] = {}
    for table in ("table3", "table4", "table5"):
        cells = [c for per_model in metrics[table].values() for c in per_model.values()]
        reported = [c for c in cells if c["reported"] is not None]
        tables[table] = {"cells": len(cells), "reported": len(reported),
                         "match_paper": (sum(fmt_acc(c["paper"]) == fmt_acc(c["reported"]) for c in reported)
                                         / len(reported) if reported else None)}
        for model, per_model in sorted(metrics[table].items()):
            accs = [a for c in per_model.values() for a in c["paper"]["per_seed"]]
            models.setdefault(model, {})[table] = sum(a == 100.0 for a in accs) / len(accs) if accs else None
    return {"profile": metrics["profile"], "tables": tables, "separation_rate": models}


def main() -> int:
    return stage_main(_main)


def _main(params: Params) -> int:
    cfg = params.active.expressivity
    tags = {k: v for k, v in provenance().items() if isinstance(v, str)}
    tags.update(profile=params.profile, params_hash=params_hash(params))
    try:
        metrics = run_stage(cfg, profile=params.profile, tags=tags, device=params.active.train.device)
    except ConfigError as err:  # run_stage's paths are relative to the profile
        raise ConfigError([f"profiles.{params.profile}.{line}" for line in err.errors]) from None
    s = metrics["seconds"]
    print(f"expressivity: {len(plan(cfg))} experiments x {cfg.n_seeds} seeds in {s['total']:.0f} s on "
          f"{metrics['workers']} workers ({s['cpu_experiments']:.0f} CPU s of experiments, MLflow {s['mlflow']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
