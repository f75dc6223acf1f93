"""Tables 11 (IS2RE) and 12 (S2EF) of paper App. D from the ``results/symmetry.json`` object.

``write_tables(result, folder)`` writes ``table11.{md,csv}`` and ``table12.{md,csv}``: the md has the paper's
layout and row order with our values (mean ± std over seeds) beside the paper's (``pipeline/paper.yaml``),
notes on units, protocol and every deliberate difference from the official evaluation, and a second table
split by frame degeneracy; the csv has one row per (table row, split of graphs) with per-seed values, the
paper's numbers and the MLflow run ids. A table whose task was not evaluated still gets written (its notes
say why), so the DVC outputs always exist.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.config import FRAME_DIM
from pipeline.reporting.table_writer import MISSING, load_paper, paper_row, write_table

SPLITS = ("all", "degenerate", "non_degenerate")  # = faenet.symmetry_eval.SPLITS (this module stays torch-free)

# Paper tables: file name, and the rows in the paper's order (other trained cells follow, sorted).
TABLE_OF = {"is2re": "table11", "s2ef": "table12"}
ROW_ORDER = {
    "is2re": ["faenet-full", "faenet-sfa", "faenet-se3-sfa", "faenet-da", "faenet-notrain", "faenet-none",
              "schnet-none", "forcenet-none", "forcenet-da", "forcenet-sfa"],
    "s2ef": ["faenet-full", "faenet-sfa", "faenet-se3-sfa", "faenet-da", "faenet-none", "faenet-notrain",
             "schnet-none", "forcenet-none", "forcenet-da", "forcenet-sfa"],
}
LABELS = {"faenet-full": "Full FA", "faenet-sfa": "SFA", "faenet-se3-sfa": "SE(3)-SFA", "faenet-da": "DA",
          "faenet-notrain": "No-Train", "faenet-none": "No-FA", "schnet-none": "SchNet",
          "forcenet-none": "ForceNet", "forcenet-da": "ForceNet-DA", "forcenet-sfa": "ForceNet-SFA",
          # not rows of the paper's Tables 11-12 (invariant by construction, like SchNet): ours only
          "gemnet_t-none": "GemNet-T (ours only)", "gemnet_q-none": "GemNet-Q (ours only)"}
MODEL_NAMES = {"faenet": "FAENet", "schnet": "SchNet", "dimenet_pp": "DimeNet++", "forcenet": "ForceNet",
               "gemnet_t": "GemNet-T", "gemnet_q": "GemNet-Q"}
METHOD_NAMES = {"sfa": "SFA", "full": "Full FA", "se3-sfa": "SE(3)-SFA", "se3-full": "SE(3)-Full FA", "da": "DA"}
# Table columns: (metric key in our results, paper key, header).
TABLE_METRICS = {
    "is2re": [("rot_i", "rot_i", "Rot-I"), ("pct_diff", "pct_diff", "%-diff"), ("refl_i", "refl_i", "Refl-I")],
    "s2ef": [("rot_i", "rot_i", "Rot-I"), ("refl_i", "refl_i", "Refl-I"), ("f_rot_e", "f_rot_e", "F-Rot-E"),
             ("f_refl_e", "f_refl_e", "F-Refl-E")],
}


def row_label(row: str) -> str:
    """The paper's name of a row ("Full FA", "No-FA"), else e.g. "DimeNet++" or "MyModel-SFA"."""
    if row in LABELS:
        return LABELS[row]
    model, _, method = row.partition("-")
    name = MODEL_NAMES.get(model, model)
    return name if method == "none" else f"{name}-{METHOD_NAMES.get(method, method)}"


def _decimals(x: float) -> int | None:
    """Decimals for 3 significant digits (0 above 100); None below 1e-3, where an exponent is clearer."""
    a = abs(x)
    if a >= 100:
        return 0
    if a >= 1e-3:
        return max(0, 2 - math.floor(math.log10(a)))
    return None


def _num(x: float | None, decimals: int | None = None) -> str:
    """``x`` with ``decimals``, else 3 significant digits: 6.5712 -> 6.57, 578.3 -> 578, 0.00012 -> 1.2e-04."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return MISSING
    d = decimals if decimals is not None else _decimals(x)
    if d is None:
        return "0" if x == 0 else f"{x:.1e}"
    return f"{x:.{d}f}"


def fmt_stat(stat: Mapping[str, Any] | None, decimals: int | None = None) -> str:
    """``mean ± std`` with the std at the mean's precision (just the mean for one seed)."""
    if not stat or stat.get("mean") is None:
        return MISSING
    mean, std = stat["mean"], stat.get("std")
    d = decimals if decimals is not None else _decimals(mean)
    if len(stat.get("per_seed", [])) < 2 or std is None:
        return _num(mean, d)
    return f"{_num(mean, d)} ± {_num(std, d)}"


def ordered_rows(task: str, entries: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, Mapping[str, Any]]]:
    """(cell, entry) in the paper's row order, then any other evaluated cell sorted by name."""
    order = ROW_ORDER.get(task, [])
    rank = {r: i for i, r in enumerate(order)}
    return sorted(entries.items(), key=lambda kv: (rank.get(kv[1]["row"], len(order)), kv[0]))


def _paper_value(v: Any) -> str:
    if v is None:
        return MISSING
    return f"{v:g}" if isinstance(v, int | float) else str(v)


def table_notes(task: str, result: Mapping[str, Any]) -> list[str]:
    cfg = result["config"]
    n_split = cfg.get("split_size", {}).get(task)
    fd = FRAME_DIM[task]
    entries = result.get(task, {})
    n_graphs = next(iter(entries.values()))["n_graphs"] if entries else 0
    n_deg = next(iter(entries.values()))["n_degenerate"] if entries else 0
    seeds = cfg["seeds"]
    transforms = ("rotations: uniform angle about z; reflections: true mirrors (det -1) through a vertical plane "
                  "of uniform normal in the xy plane (z never flipped), as the 2D frames of slabs"
                  if fd == 2 else "rotations: Haar-uniform on SO(3); reflections: true mirrors (det -1) "
                  "through a plane of uniform normal on the sphere")
    skipped = [c for c in cfg.get("excluded_cells", []) if f"-{task}-" in c]
    notes = [
        f"Profile `{result['profile']}`; data: the profile's {task.upper()} set (the embedded EMT stand-in "
        "unless the profile's data source is OC20), so absolute values are not the paper's OC20 numbers; the "
        "paper's values (`pipeline/paper.yaml`) are given for orientation.",
        f"Graphs: {n_graphs} of the `val_id` split"
        + (f" ({n_split} graphs; a subset drawn with seed {cfg['seed']})" if n_split and n_split > n_graphs
           else " (all of it)") + f", batches of {cfg['batch_size']}; {n_deg} of them have degenerate PCA "
        f"frames (relative eigengap < {cfg['degenerate_tol']:g}; see the breakdown below).",
        f"Transforms: {cfg['n_transforms']} per graph and metric, each graph its own; {transforms}; plus a "
        f"Gaussian translation of std {cfg['translation_scale']:g} Å per component. The same draws (seed "
        f"{cfg['seed']}) for every row: rows are paired comparisons.",
        "Models in eval mode through their own symmetry wrapper: SFA draws one frame per graph and pass (seeded "
        "per cell and seed), Full FA averages all frames, DA (a training-time method) and No-FA see the raw "
        "input. Predictions de-normalised with each checkpoint's normaliser (eV, eV/Å).",
        "Units: Rot-I, Refl-I and MAE in meV; F-Rot-E, F-Refl-E in meV/Å; %-diff in percent "
        "(100 |E(x) - E(Rx)| / |y|, mean over graphs; large when |y| is small); Pos Å.",
        "Rot-I / Refl-I: mean |E(x) - E(gx)| over (graph, transform) pairs. F-Rot-E / F-Refl-E: mean over atoms "
        "of the L2 norm of F(x)Q - F(gx).",
        "Pos, two measures: **Pos frac** = fraction of (graph, rotation) pairs whose input to the backbone "
        "changed (> 1e-4 Å), i.e. the paper's binary Pos measured (0 = same representation); **Pos Å** = mean "
        "per-atom distance between the backbone inputs for x and Rx (Full FA: the sets of frame projections "
        "compared, symmetric Chamfer), each cloud centred first (the 2D frames leave z uncentred by design and "
        "no model here reads absolute positions, so a z translation is not a new representation). Models "
        "without FA see raw coordinates, so they get Pos frac 1 even when architecturally invariant (the paper "
        f"sets SchNet's Pos to 0 by convention). Expected Pos frac of SFA: {1 - 1 / 2 ** fd:.2f} (the same of "
        f"{2 ** fd} frames drawn for x and Rx with probability 1/{2 ** fd}); of SE(3)-SFA: "
        f"{1 - 1 / 2 ** (fd - 1):.2f} ({2 ** (fd - 1)} frames). Reflected-input Pos (`pos_refl`) is in the JSON.",
        f"Mean ± sample std over seeds {', '.join(str(x) for x in seeds)} (per-seed values in "
        "`results/symmetry.json`); one seed: the value alone.",
        "MAE (ours): energy MAE of the predictions on the untransformed evaluated graphs, i.e. the reference "
        "E(x) of the invariance metrics (for SFA the same frame draws); recomputed here, so it exists for "
        "No-Train too. MAE train val_id: the train stage's energy MAE on the whole `val_id` split "
        "(`results/train/<cell>.json`, its own SFA draws).",
        "No-Train: FAENet with the profile's hyperparameters for the task, initialised after "
        "`torch.manual_seed(seed)`, no symmetry method, outputs de-normalised with the mean/std of the training "
        "targets (fitted on the training split as the train stage does). The paper prints No-Train's IS2RE MAE "
        "as 595, the No-FA value.",
        "Differences from the official evaluation (the authors' `eval_model_symmetries` in the faenet package's "
        "`faenet/eval.py`, and `test_model_symmetries` in their ocp fork), all deliberate: (1) Pos: the "
        "official code summed the projected positions over all frames before differencing, which is 0 for "
        "Full FA whatever the frames; here frame sets are compared, and the binary value is measured per "
        "(graph, transform) pair; (2) reflections: the official 'reflection' could be diag(-1, -1, 1), a 180° "
        "rotation, fixed per run; here every reflection has det -1 and a random vertical plane; (3) forces: L2 "
        "norm per atom (rotation-invariant) instead of the sum of absolute components; F-RE-graph (F-Rot-E "
        "divided again by the number of graphs) is not reported; (4) rotations: Haar/uniform instead of Euler "
        "angles; (5) units: de-normalised meV and meV/Å, where the official metrics were in normalised model "
        "units; %-diff in percent (the official code reports a fraction); (6) a random translation is added.",
    ]
    if skipped:
        notes.append(f"Trained but not evaluated (`symmetry.exclude` = {cfg['exclude']}): "
                     + ", ".join(f"`{c}`" for c in skipped) + ".")
    return notes


def _breakdown_lines(task: str, rows: list[tuple[str, Mapping[str, Any]]]) -> list[str]:
    cols = [("pos_frac", "Pos frac"), ("pos", "Pos Å")] + [(k, h) for k, _, h in TABLE_METRICS[task]] + \
        [("mae_meV", "MAE (ours)")]
    header = ["Method", "Graphs", "n"] + [h for _, h in cols]
    lines = ["", "## Split by frame degeneracy", "",
             "Same metrics on the evaluated graphs whose PCA frames are degenerate (FA cannot be exact on them) "
             "and on the others.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, e in rows:
        for split in ("degenerate", "non_degenerate"):
            s = e[split]
            cells = [e["label"], split.replace("_", "-"), str(s["n_graphs"])]
            cells += [fmt_stat(s.get(k), 2 if k == "pos_frac" else None) for k, _ in cols]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_tables(result: Mapping[str, Any], folder: Path) -> list[Path]:
    """``table11`` (IS2RE) and ``table12`` (S2EF): md (ours beside the paper) and csv (one row per row x split)."""
    written = []
    for task, name in TABLE_OF.items():
        paper = load_paper().get(name, {})
        metrics = TABLE_METRICS[task]
        header = ["Method", "Pos (paper)", "Pos frac (ours)", "Pos Å (ours)"]
        for _, _, h in metrics:
            header += [f"{h} (ours)", f"{h} (paper)"]
        header += ["MAE (ours)", "MAE train val_id", "MAE (paper)"]
        entries = result.get(task)
        rows: list[list[str]] = []
        csv_rows: list[dict[str, Any]] = []
        ordered = ordered_rows(task, entries) if entries else []
        for cell, e in ordered:
            p = paper_row(name, e["row"])
            a = e["all"]
            line = [e["label"], _paper_value(p.get("pos")), fmt_stat(a.get("pos_frac"), 2), fmt_stat(a.get("pos"))]
            for k, pk, _ in metrics:
                line += [fmt_stat(a.get(k)), _paper_value(p.get(pk))]
            line += [fmt_stat(a.get("mae_meV")), fmt_stat(e.get("mae_meV_train_val_id")), _paper_value(p.get("mae"))]
            rows.append(line)
            for split in SPLITS:
                s = e[split]
                r: dict[str, Any] = {"table": name, "row": e["row"], "label": e["label"], "cell": cell,
                                     "split": split, "n_graphs": s["n_graphs"],
                                     "seeds": ";".join(str(x) for x in e["seeds"])}
                for k, v in s.items():
                    if isinstance(v, dict):
                        r[f"{k}_mean"], r[f"{k}_std"] = v["mean"], v["std"]
                        r[f"{k}_per_seed"] = ";".join("" if x is None else repr(x) for x in v["per_seed"])
                tm = e.get("mae_meV_train_val_id") if split == "all" else None
                r["mae_meV_train_val_id_mean"] = tm["mean"] if tm else None
                r["mae_meV_train_val_id_std"] = tm["std"] if tm else None
                for pk in ["pos", *[pk for _, pk, _ in metrics], "mae"]:
                    r[f"paper_{pk}"] = p.get(pk) if split == "all" else None
                r["mlflow_run_ids"] = ";".join(x for x in e["mlflow_run_ids"] if x)
                r["train_mlflow_run_ids"] = ";".join(e["train_mlflow_run_ids"])
                csv_rows.append(r)
        if entries is None:
            notes = [f"Not evaluated: `{task}` is not in `symmetry.datasets` of profile `{result['profile']}`."]
        elif not entries:
            notes = [f"No trained {task} cell and `symmetry.notrain` off: nothing to evaluate."]
        else:
            notes = table_notes(task, result)
        title = paper.get("title", name) + f" — ours (profile {result['profile']}) beside the paper"
        md = write_table(name, title, header, rows, csv_rows, notes, folder=folder)
        if ordered:
            with md.open("a") as fh:
                fh.write("\n".join(_breakdown_lines(task, ordered)) + "\n")
        written.append(md)
    return written


WRAP_FRAME_NAMES = {"pca": "PCA of positions (paper, trained with)", "lattice": "lattice (Gram-Schmidt of the cell)",
                    "edges": "PCA of edge vectors"}


def write_wrap_table(result: Mapping[str, Any], folder: Path) -> Path:
    """``wrap_i.{md,csv}``: Wrap-I (meV) of the trained FA cells with each frame construction at inference.

    One row per (cell, construction); written (with a note) even when nothing was evaluated, so the DVC
    output always exists."""
    cfg = result["config"].get("wrap_i", {})
    header = ["Task", "Cell", "Frames at inference", "Wrap-I offsets (meV)", "Wrap-I translate+wrap (meV)",
              "energy MAE (meV)", "degenerate frames"]
    rows: list[list[str]] = []
    csv_rows: list[dict[str, Any]] = []
    for task in result["config"]["datasets"]:
        for cell, e in ordered_rows(task, result.get(task, {})):
            for c, w in e.get("wrap_i", {}).items():
                rows.append([task, f"{e['label']} (`{cell}`)", WRAP_FRAME_NAMES.get(c, c),
                             fmt_stat(w["wrap_i_offsets"]), fmt_stat(w["wrap_i_translate"]),
                             fmt_stat(w.get("mae_meV")), f"{w['n_degenerate']}/{w['n_graphs']}"])
                r: dict[str, Any] = {"task": task, "cell": cell, "frames": c, "n_graphs": w["n_graphs"],
                                     "n_degenerate": w["n_degenerate"], "seeds": ";".join(map(str, e["seeds"]))}
                for k in ("wrap_i_offsets", "wrap_i_translate", "mae_meV"):
                    if k not in w:
                        continue
                    r[f"{k}_mean"], r[f"{k}_std"] = w[k]["mean"], w[k]["std"]
                    r[f"{k}_per_seed"] = ";".join(repr(x) for x in w[k]["per_seed"])
                r["mlflow_run_ids"] = ";".join(x for x in e["mlflow_run_ids"] if x)
                csv_rows.append(r)
    notes = [
        "Beyond the paper. Wrap-I: mean |E(x) - E(x')| over graphs and draws, x' = the same periodic structure "
        "described differently: (offsets) each atom moved by a random lattice vector (integer offsets in [-2, 2] "
        "along periodic directions), (translate+wrap) a uniform in-plane translation then every atom wrapped into "
        "the cell; the graph's cell offsets move with the atoms, so every edge vector is unchanged "
        "(`faenet.symmetry_metrics.wrap_moves`). A model reading only edge vectors scores 0.",
        "Every model was TRAINED with PCA frames of the stored positions (the paper's Eq. (2)); the `lattice` and "
        "`edges` rows swap the frame construction in at inference only (`faenet.frames.compute_frames_by`), so "
        "their Wrap-I is exact by construction but their accuracy is not what a model trained with them would get.",
        "SFA cells: the frame index is redrawn with the same seed for a structure and its moved copy, so Wrap-I "
        "measures the frames, not SFA's draw noise.",
        f"{cfg.get('max_graphs')} graphs of the evaluated split per seed, {cfg.get('n_transforms')} draws of each "
        "move; degenerate frames: relative gap below `symmetry.degenerate_tol` for that construction "
        "(edges of fcc-like slabs are near-isotropic in-plane).",
    ]
    if not rows:
        notes.insert(0, "Not evaluated: no trained FA cell matches `symmetry.wrap_i.cells` in profile "
                        f"`{result['profile']}`.")
    return write_table("wrap_i", f"Wrap-I by frame construction (profile {result['profile']})", header, rows,
                       csv_rows, notes, folder=folder)
