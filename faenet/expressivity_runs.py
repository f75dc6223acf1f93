"""The expressivity experiments of Tables 3-5 (App. B.2): planning, model construction, the worker pool, facts.

``faenet.expressivity`` holds the pairs and the dojo's training/evaluation protocol for ONE pair; this module runs
the grid of the tables with it:

- ``plan(cfg)``: every ``Experiment`` (table, model, pair, layers, column): Table 3 the k-chain pair
  (k = ``kchain_k``) per number of layers in ``kchain_layers``; Table 4 the stars of ``folds``; Table 5 the
  ``body_pairs``; Tables 4-5 with ``pair_layers`` layers.
- Models are ``<model>`` or ``<model>-<symmetry>`` (``faenet.symmetry.split_model_name``), every one inside
  ``SymmetryWrapper(..., frame_dim=3)``; ``resolved_hparams`` gives its constructor arguments (the dojo cutoff
  unless given, ``hparams[base]`` then ``hparams[model]``, the layer argument, no force head).
- ``run_experiments``: every experiment with all its seeds in a pool of ``cfg.workers`` processes (fork where
  available, so the parent's warmed caches, e.g. DimeNet++'s sympy basis, are inherited), one torch thread
  each, longest first. Every experiment seeds itself: results do not depend on worker count or order.
- ``pair_facts`` (congruence, what frame averaging sees), ``model_facts`` (what each model is by construction)
  and ``protocol_facts``: the computed context the tables print beside the accuracies.

Warm-up hooks (``faenet.warmup``) run on the pair, the whole training set of this task, unless the model's
hyperparameters say ``allow_unfitted: true`` (GemNet's own switch), which then also skips the hook. GemNet's
scaling-factor fit matches per-feature variances across the rows (edges, triplets, quadruplets) of the training
batches; on the dojo pairs those statistics are often undefined, so the fit raises (computed in
tests/test_expressivity.py): equal spoke lengths give zero variance (GemNet-T on ``2body``, ``4body_chiral``),
and a star graph has no quadruplets at all (GemNet-Q on every pair of Tables 4-5). The profiles therefore train
GemNet unfitted (factors 1), the same for every cell, rather than fitting some cells and not others.

``cfg`` is any object with the fields of ``pipeline.config.ExpressivityConfig`` (``ExpressivitySettings``);
bad settings raise ``ValueError`` naming the key under ``expressivity.``.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from faenet.symmetry import is_stochastic, method_group, split_model_name

#: Constructor argument that sets the number of interaction layers; other models: the first of LAYER_NAMES
#: their constructor accepts.
LAYER_ARG = {"faenet": "num_interactions", "schnet": "num_interactions", "forcenet": "num_interactions",
             "dimenet_pp": "num_blocks", "gemnet_t": "num_blocks", "gemnet_q": "num_blocks"}
LAYER_NAMES = ("num_interactions", "num_blocks", "num_layers")
#: Models whose outputs use only invariant scalars: distances (SchNet); also angles (DimeNet++, GemNet-T);
#: also dihedral angles, unsigned (GemNet-Q's atan2(|r_c x r_d|, r_c . r_d) in [0, π]: reflection-invariant).
INVARIANT_BASES = ("schnet", "dimenet_pp", "gemnet_t", "gemnet_q")
#: Relative cost per layer of one experiment, to start the long ones first (measured on 2 CPU cores).
COST = {"dimenet_pp": 3.0, "gemnet_t": 3.0, "gemnet_q": 4.0, "forcenet": 2.0, "full": 2.0}

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


class ExpressivitySettings(Protocol):
    """The fields of ``pipeline.config.ExpressivityConfig`` this module reads."""

    models: list[str]
    n_seeds: int
    epochs: int
    lr: float
    kchain_k: int
    kchain_layers: list[int]
    folds: list[int]
    rotsym_r: int
    body_pairs: list[str]
    pair_layers: int
    strict_transforms: int
    paper_draws: int
    reuse_model: bool
    workers: int
    hparams: dict[str, dict[str, Any]]


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


def invariance(name: str) -> str:
    """What the model is by construction: ``"E(3)-invariant"`` (INVARIANT_BASES), ``"FA: E(3)-invariant if frames
    are well defined"``, ``"SFA: E(3)-invariant in distribution if frames are well defined"`` (SE(3) for the
    ``se3-`` methods), or ``"none (lab frame)"`` (DA is off at evaluation)."""
    base, method = split_model_name(name)
    group = "SE(3)" if method_group(method) == "SE3" else "E(3)"
    if method.endswith("full"):
        return f"FA: {group}-invariant if frames are well defined"
    if method.endswith("sfa"):
        return f"SFA: {group}-invariant in distribution if frames are well defined"
    if base in INVARIANT_BASES:
        return "E(3)-invariant"
    return "none (lab frame)"


def plan(cfg: ExpressivitySettings) -> list[Experiment]:
    """Every experiment of the three tables, in table / model / column order."""
    out = []
    for model in cfg.models:
        out += [Experiment("table3", model, f"kchain_{cfg.kchain_k}", n, str(n)) for n in cfg.kchain_layers]
    for model in cfg.models:
        out += [Experiment("table4", model, f"rotsym_{f}", cfg.pair_layers, str(f)) for f in cfg.folds]
    for model in cfg.models:
        out += [Experiment("table5", model, p, cfg.pair_layers, p) for p in cfg.body_pairs]
    return out


def build_pair(name: str, cfg: ExpressivitySettings):
    """The dojo pair called ``name`` with ``cfg``'s rotsym rotation (``faenet.expressivity.pair_by_name``)."""
    from faenet.expressivity import pair_by_name

    try:
        return pair_by_name(name, rotsym_r=cfg.rotsym_r)
    except ValueError as err:
        raise ValueError(f"expressivity: {err}") from None


def layer_argument(base: str) -> str:
    """The constructor argument of model ``base`` that sets its number of interaction layers."""
    from baselines.registry import accepted_hparams

    if base in LAYER_ARG:
        return LAYER_ARG[base]
    accepted = accepted_hparams(base) or []
    for arg in LAYER_NAMES:
        if arg in accepted:
            return arg
    raise ValueError(f"expressivity.models: cannot tell which hyperparameter of {base!r} sets its number of "
                     f"layers (none of {list(LAYER_NAMES)}); add it to LAYER_ARG in faenet/expressivity_runs.py")


def resolved_hparams(cfg: ExpressivitySettings, model: str, layers: int, max_edge: float = 0.0) -> dict[str, Any]:
    """Constructor arguments of ``model`` with ``layers`` layers: the dojo cutoff (10 Å) unless given,
    ``hparams[base]`` then ``hparams[model]``, the layer argument, no force head. ``ValueError`` names the
    bad key; ``max_edge`` (Å): the longest edge of the pairs, which the cutoff must keep."""
    from baselines.registry import check_hparams
    from faenet.expressivity import DOJO_CUTOFF

    base, _ = split_model_name(model)
    hp = {"cutoff": DOJO_CUTOFF, **cfg.hparams.get(base, {}), **(cfg.hparams.get(model, {}) if model != base else {})}
    arg = layer_argument(base)
    for key, why in ((arg, "the stage sets it from kchain_layers (Table 3) and pair_layers (Tables 4-5)"),
                     ("regress_forces", "the pairs are classified from the energy head only")):
        if key in hp:
            raise ValueError(f"expressivity.hparams.{base}.{key}: {why}; remove it")
    hp[arg] = layers
    hp["regress_forces"] = ""
    try:
        check_hparams(base, hp)
    except ValueError as err:
        raise ValueError(f"expressivity.hparams.{base}: {err}") from None
    if float(hp["cutoff"]) < max_edge:
        raise ValueError(f"expressivity.hparams.{base}.cutoff={hp['cutoff']} Å drops edges of the dojo pairs "
                         f"(longest {max_edge:.2f} Å); use >= {max_edge:.1f} (the dojo's is 10)")
    return hp


def check_settings(cfg: ExpressivitySettings, experiments: Sequence[Experiment]) -> None:
    """Every configuration error (pair names, hyperparameters, cutoffs) before any training."""
    longest = 0.0
    for name in dict.fromkeys(e.pair for e in experiments):
        for g in build_pair(name, cfg).graphs:
            src, dst = g.edge_index
            longest = max(longest, float((g.pos[src] - g.pos[dst]).norm(dim=1).max()))
    for model in cfg.models:
        for layers in sorted({e.layers for e in experiments}):
            resolved_hparams(cfg, model, layers, max_edge=longest)


def model_factory(model: str, hparams: dict[str, Any]) -> Callable[[], Any]:
    """Zero-argument builder of ``SymmetryWrapper(build_model(base, **hparams), symmetry, frame_dim=3)``."""
    from baselines.registry import build_model
    from faenet.symmetry import SymmetryWrapper

    base, method = split_model_name(model)

    def factory():
        return SymmetryWrapper(build_model(base, **hparams), method, frame_dim=3)

    return factory


def run_experiment(exp: Experiment, cfg: ExpressivitySettings, device: str = "cpu") -> dict[str, Any]:
    """Train ``exp`` once per seed and evaluate both protocols (``faenet.expressivity.run_pair_experiment``) on
    ``device`` (a ``train.device`` string, resolved here, in the worker that computes)."""
    from faenet.device import resolve_device
    from faenet.expressivity import run_pair_experiment

    t0, c0 = time.perf_counter(), time.process_time()
    pair = build_pair(exp.pair, cfg)
    hp = resolved_hparams(cfg, exp.model, exp.layers)
    factory = model_factory(exp.model, hp)
    n_params = sum(p.numel() for p in factory().parameters())
    res = run_pair_experiment(factory, pair, seeds=tuple(range(cfg.n_seeds)), reuse_model=cfg.reuse_model,
                              n_draws=cfg.paper_draws if is_stochastic(split_model_name(exp.model)[1]) else 1,
                              n_strict_draws=cfg.strict_transforms, epochs=cfg.epochs, lr=cfg.lr,
                              device=resolve_device(device), prepare=not hp.get("allow_unfitted", False))
    return {"paper": res.accuracies["paper"], "strict": res.accuracies["strict"],
            "best_epoch": [h.best_epoch for h in res.histories],
            "best_val_acc": [h.best_val_acc for h in res.histories],
            "final_loss": [h.loss[-1] for h in res.histories], "n_params": n_params,
            "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}


def _cost(exp: Experiment) -> float:
    base, method = split_model_name(exp.model)
    return COST.get(base, 1.0) * COST.get(method, 1.0) * exp.layers


def _job(args: tuple[Experiment, ExpressivitySettings, str]) -> tuple[str, dict[str, Any]]:
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


def _warm_caches(cfg: ExpressivitySettings) -> None:
    """Build each model once so per-process caches (DimeNet++'s sympy basis, ~5-15 s) exist before forking."""
    for model in cfg.models:
        model_factory(model, resolved_hparams(cfg, model, 1))()


def run_experiments(cfg: ExpressivitySettings, experiments: list[Experiment], progress: bool = True,
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


def pair_facts(cfg: ExpressivitySettings, experiments: list[Experiment]) -> dict[str, dict[str, Any]]:
    """``congruence``, ``frames`` and ``pairs`` sections of the results, for every pair of ``experiments``."""
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


def model_facts(cfg: ExpressivitySettings) -> dict[str, dict[str, Any]]:
    """The ``models`` section of the results: per model, what it is by construction and its 1-layer hparams."""
    out = {}
    for m in cfg.models:
        base, method = split_model_name(m)
        out[m] = {"base": base, "symmetry": method, "group": method_group(method), "invariance": invariance(m),
                  "stochastic": is_stochastic(method), "hparams": resolved_hparams(cfg, m, 1),
                  "layer_argument": layer_argument(base)}
    return out


def protocol_facts(cfg: ExpressivitySettings) -> dict[str, Any]:
    """The ``protocol`` section of the results: the fixed settings (``PROTOCOL``) and ``cfg``'s."""
    return {**PROTOCOL, "lr": cfg.lr, "epochs": cfg.epochs, "n_seeds": cfg.n_seeds,
            "strict_transforms": cfg.strict_transforms, "paper_draws_stochastic": cfg.paper_draws,
            "reuse_model": cfg.reuse_model}
