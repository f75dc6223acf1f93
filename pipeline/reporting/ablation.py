"""Table 6's results as numbers and text (torch-free): ``results/ablation.json`` from the run records and
throughputs (``summarize``), its headline (``metrics/ablation.json``) and ``reports/tables/table6.{md,csv}``.

``pipeline.ablation`` (the stage) trains and times the variants; this module only arranges what it measured.
``results/ablation.json`` (read back through ``pipeline.reporting.schemas.Ablation``):

- ``stage`` ("ablation"), ``profile``, ``seconds`` (wall time of this run of the stage), ``machine``,
  ``packages``, ``throughput_mlflow_run_id``;
- ``protocol``: ``dataset`` ("is2re"), ``dataset_hash``, ``n_train`` (graphs trained on), ``eval_splits`` (the
  4 val splits), ``symmetry``, ``seeds``, ``train_settings`` (the task settings used, epochs included),
  ``base_hparams`` (the baseline row's FAENet arguments), ``mae_unit`` ("meV"), ``throughput`` (``data``,
  ``n_graphs``, ``batch_size``, ``n_batches``, ``atoms_per_graph``, ``edges_per_graph``, ``warmup``,
  ``repeats``, ``threads``, ``rewiring``, ``mode``, ``weights``);
- ``baseline``: the row every ``vs_baseline`` compares with ("FAENet (baseline)"; null if not run);
- ``order``: the variants run, in Table 6 order;
- ``variants``: ``{row: {switches, hparams, n_params, mae_mev: {val_id, val_ood_ads, val_ood_cat, val_ood_both,
  average: {mean, std, per_seed}}, throughput: {samples_per_s, samples_per_s_per_repeat, cpu_utilisation},
  train_seconds: {mean, std, per_seed}, mlflow_run_ids, vs_baseline: {mae_delta_mev (row - baseline,
  positive = worse), throughput_ratio (row / baseline, > 1 = faster)}, paper: {infer, mae, mae_delta_mev,
  throughput_ratio} (Table 6; null fields where the paper has no number)}}``;
- ``rankings``: ``{ours|paper: {mae: [rows, best first], throughput: [rows, fastest first]}}`` over the rows
  run; ``best_mae`` and ``fastest``: ``{ours|paper: row}``.

``average`` is the mean of the four val splits' energy MAE of one seed; mean ± std (sample std) over seeds.
Claims read it as e.g. ``best_mae.ours == baseline``, ``fastest.ours == "Basic MP"``,
``variants["Only r_ij"].vs_baseline.mae_delta_mev > 0`` (the RBF term of Eq. (7) improves MAE).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from faenet.tasks import OC20_VAL_SPLITS
from pipeline.reporting.schemas import Ablation
from pipeline.reporting.table_writer import MISSING, TABLES, fmt_ms, mean_std, paper_row, write_table

VAL_SPLITS = OC20_VAL_SPLITS
BASELINE = "FAENet (baseline)"
#: Table 6 row -> what its switch does in ``faenet.model`` (the table's notes).
SWITCH_NOTES = {
    "Only r_ij": "edge_embed_type='rij' (Linear(r_ij) only, no RBF of the distance)",
    "Only Spherical Harmonics": "edge_embed_type='sh' (real spherical harmonics of r_ij/|r_ij|, "
                                "degrees 1..3, instead of r_ij and its RBF)",
    "All": "edge_embed_type='all' (one Linear on [r_ij || SH || RBF])",
    "1 layer in MLP": "second_layer_MLP=False (one-layer atom and edge embedding MLPs)",
    "Simple MP": "mp_type='edge_filter' (filter from e_ij only: f_ij = swish(W e_ij))",
    "Basic MP": "mp_type='simple' (the package's name: m_i = sum_j h_j * e_ij, e_ij not transformed; "
                "num_filters set to hidden_channels, as the official code)",
    "Updownscale MP": "mp_type='updownscale_base' (down/up projection of h around Eq. (8))",
    "Attention mecha": "mp_type='attention' (PyG TransformerConv on h and e_ij)",
    "No complex MP": "complex_mp=False (no extra Linear + swish at the end of each block)",
    "Simple Energy Head": "energy_head='' (plain sum pooling instead of the weighted sum)",
    "No Jumping Connections": "skip_co='' (no per-block energies concatenated into the output)"}


def ranking(values: Mapping[str, float | None], reverse: bool) -> list[str]:
    """The rows with a value, sorted by it (ascending; ``reverse``: descending); ties keep their order."""
    known = [(v, x) for v, x in values.items() if x is not None]
    return [v for v, _ in sorted(known, key=lambda t: t[1], reverse=reverse)]


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The stage's DVC metric from its full ``result``: per Table 6 row run, the energy MAE (meV, mean of the
    four val splits; mean and std over seeds) and the forward throughput (samples/s)."""
    Ablation.model_validate(result)  # the keys read below are there (the values are read as written)
    rows = {}
    for row in result["order"]:
        v = result["variants"][row]
        rows[row] = {"mae_meV": v["mae_mev"]["average"]["mean"], "mae_meV_std": v["mae_mev"]["average"]["std"],
                     "samples_per_s": v["throughput"]["samples_per_s"]}
    return {"profile": result["profile"], "rows": rows}


def summarize(profile: str, variants: Sequence[str], switches: Mapping[str, dict], hparams: Mapping[str, dict],
              runs: Mapping[str, list[dict]], tp: Mapping[str, dict], *, tp_info: dict[str, Any], symmetry: str,
              seeds: Sequence[int], train_settings: dict[str, Any], base: dict[str, Any], data_hash: str,
              n_train: int) -> dict[str, Any]:
    """``results/ablation.json`` (module docstring) without the stage's run facts (seconds, machine, ...).

    ``switches``: each row's Table 6 switches (``faenet.model.TABLE6_ABLATIONS``); ``runs``: the run records of
    each row, one per seed (``final`` metrics per split, ``n_params``, ``train_seconds``, ``run_id``); ``tp``:
    each row's throughput, measured as ``tp_info`` says; ``base``: the baseline row's FAENet arguments."""
    out: dict[str, dict[str, Any]] = {}
    for v in variants:
        per_split = {s: mean_std([1000 * r["final"][s]["energy_mae"] for r in runs[v]]) for s in VAL_SPLITS}
        per_split["average"] = mean_std([1000 * statistics.fmean(r["final"][s]["energy_mae"] for s in VAL_SPLITS)
                                         for r in runs[v]])
        paper = paper_row("table6", v)
        out[v] = {"switches": switches[v], "hparams": hparams[v], "n_params": runs[v][0]["n_params"],
                  "mae_mev": per_split, "throughput": tp[v],
                  "train_seconds": mean_std([r["train_seconds"] for r in runs[v]]),
                  "mlflow_run_ids": [r["run_id"] for r in runs[v]],
                  "paper": {"infer": paper.get("infer"), "mae": paper.get("mae")}}
    baseline = BASELINE if BASELINE in out else None
    paper_base = paper_row("table6", BASELINE)
    for r in out.values():
        if baseline is None:
            r["vs_baseline"] = {"mae_delta_mev": None, "throughput_ratio": None}
        else:
            b = out[baseline]
            r["vs_baseline"] = {"mae_delta_mev": r["mae_mev"]["average"]["mean"] - b["mae_mev"]["average"]["mean"],
                                "throughput_ratio": r["throughput"]["samples_per_s"] / b["throughput"]["samples_per_s"]}
        p = r["paper"]
        p["mae_delta_mev"] = p["mae"] - paper_base["mae"] if p["mae"] is not None and paper_base else None
        p["throughput_ratio"] = p["infer"] / paper_base["infer"] if p["infer"] is not None and paper_base else None
    ours_mae = {v: r["mae_mev"]["average"]["mean"] for v, r in out.items()}
    ours_tp = {v: r["throughput"]["samples_per_s"] for v, r in out.items()}
    paper_mae = {v: r["paper"]["mae"] for v, r in out.items()}
    paper_tp = {v: r["paper"]["infer"] for v, r in out.items()}
    rankings = {"ours": {"mae": ranking(ours_mae, False), "throughput": ranking(ours_tp, True)},
                "paper": {"mae": ranking(paper_mae, False), "throughput": ranking(paper_tp, True)}}
    return {
        "stage": "ablation", "profile": profile,
        "protocol": {"dataset": "is2re", "dataset_hash": data_hash, "n_train": n_train, "eval_splits": list(VAL_SPLITS),
                     "symmetry": symmetry, "seeds": list(seeds), "train_settings": train_settings,
                     "base_hparams": base, "mae_unit": "meV", "throughput": tp_info},
        "baseline": baseline, "order": list(variants), "variants": out, "rankings": rankings,
        "best_mae": {k: (r["mae"][0] if r["mae"] else None) for k, r in rankings.items()},
        "fastest": {k: (r["throughput"][0] if r["throughput"] else None) for k, r in rankings.items()},
    }


def summary_lines(result: Mapping[str, Any]) -> list[str]:
    """One console line per row run: throughput and MAE."""
    lines = []
    for v in result["order"]:
        r = result["variants"][v]
        lines.append(f"{v:26s} {r['throughput']['samples_per_s']:9.1f} samples/s   MAE "
                     f"{fmt_ms(r['mae_mev']['average']['mean'], r['mae_mev']['average']['std'], 1)} meV")
    return lines


def write_table6(result: Mapping[str, Any], folder: Path = TABLES) -> Path:
    """``table6.md`` / ``table6.csv`` in the paper's layout, ours beside the paper's."""
    def num(x: float | None, digits: int = 0) -> str:
        return MISSING if x is None else f"{x:.{digits}f}"

    header = ["Component", "Throughput (samples/s), ours", "Throughput, paper", "MAE (meV, average), ours",
              "MAE, paper"]
    rows, csv_rows = [], []
    for v in result["order"]:
        r = result["variants"][v]
        mae = r["mae_mev"]["average"]
        name = v if v == BASELINE else f"– {v}"
        rows.append([name, num(r["throughput"]["samples_per_s"]), num(r["paper"]["infer"]),
                     fmt_ms(mae["mean"], mae["std"], 1), num(r["paper"]["mae"])])
        csv_rows.append({"component": v, "switches": r["switches"], "throughput_samples_per_s":
                         r["throughput"]["samples_per_s"], "paper_throughput": r["paper"]["infer"],
                         "mae_mev_mean": mae["mean"], "mae_mev_std": mae["std"],
                         "mae_mev_per_seed": mae["per_seed"], "paper_mae_mev": r["paper"]["mae"],
                         **{f"{s}_mae_mev": r["mae_mev"][s]["mean"] for s in VAL_SPLITS},
                         "mae_delta_vs_baseline_mev": r["vs_baseline"]["mae_delta_mev"],
                         "throughput_ratio_vs_baseline": r["vs_baseline"]["throughput_ratio"],
                         "n_params": r["n_params"], "mlflow_run_ids": " ".join(r["mlflow_run_ids"])})
    p, tp = result["protocol"], result["protocol"]["throughput"]
    ts = p["train_settings"]
    base = p["base_hparams"]
    notes = [
        f"Ours: FAENet on the embedded IS2RE-EMT set ({p['n_train']} training graphs, dataset "
        f"{p['dataset_hash'][:12]}), "
        f"{p['symmetry']} frame averaging, {ts['epochs']} epochs, batch {ts['batch_size']}, lr {ts['lr']} "
        f"({ts['scheduler']}, {ts['warmup_steps']} warm-up steps), rewiring {ts['rewiring']}; seeds "
        f"{p['seeds']} (mean ± sample std over seeds). MAE = energy MAE averaged over the four val splits "
        "(val_id, val_ood_ads, val_ood_cat, val_ood_both), in meV; EMT energies, not DFT: compare orderings and "
        "differences between rows, not absolute values, with the paper's OC20 numbers.",
        "Baseline configuration: the paper's IS2RE architecture (Table 7 and the official config: "
        f"mp_type {base['mp_type']!r}, complex_mp {base['complex_mp']}, energy_head {base['energy_head']!r}, "
        f"skip_co {base['skip_co']!r}, second_layer_MLP {base['second_layer_MLP']}, edge_embed_type "
        f"{base['edge_embed_type']!r}, max_num_neighbors {base['max_num_neighbors']}) at the profile's sizes: "
        f"hidden {base['hidden_channels']}, filters {base['num_filters']}, {base['num_interactions']} interaction "
        f"blocks, {base['num_gaussians']} gaussians, cutoff {base['cutoff']} Å (Table 7: 384, 480, 5, 104, 6).",
        f"Throughput: {tp['mode']}; the same {tp['n_graphs']} graphs for every variant ({tp['description']}; "
        f"{tp['atoms_per_graph']:.1f} atoms and {tp['edges_per_graph']:.0f} edges per graph on average, rewiring "
        f"{tp['rewiring']}) in {tp['n_batches']} batch(es) of {tp['batch_size']}, {tp['warmup']} warm-up pass(es), "
        f"median of {tp['repeats']} passes; {result['machine']['cpu']}, {tp['threads']} threads. The paper timed "
        "OC20 IS2RE on one RTX8000 GPU: absolute throughputs are not comparable, their ratios to the baseline "
        "row are (results/ablation.json: vs_baseline, paper.throughput_ratio).",
        # ``order`` is in Table 6 order (the stage's selected_variants), as faenet.model.TABLE6_ABLATIONS
        "Row names -> model switches (faenet.model.TABLE6_ABLATIONS): "
        + "; ".join(f"{k}: {SWITCH_NOTES[k]}" for k in result["order"] if k in SWITCH_NOTES) + ".",
        "Paper: App. B.3 Table 6 (pipeline/paper.yaml table6). Its baseline throughput (2129) differs from Table "
        "9's FAENet (2469).",
    ]
    return write_table("table6", "Table 6: FAENet ablation on IS2RE (App. B.3), ours vs paper", header, rows,
                       csv_rows, notes, folder=folder)
