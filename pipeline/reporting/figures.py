"""Fig. 2 and Fig. 3 of the paper (Pareto plots: IS2RE MAE vs throughput, QM9 relative improvement vs epoch
time), ours beside the paper's, as PNGs and as the CSVs ``dvc plots`` reads."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from pipeline.reporting.table_writer import load_paper
from pipeline.reporting.tables import bench_throughput, cells_of, display, graph_of, split_stat

# ----------------------------------------------------------------------------------------------------------
# Figures (Fig. 2, Fig. 3) and their DVC plot data
# ----------------------------------------------------------------------------------------------------------

def pareto_data(ctx: dict[str, Any], qm9: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Points of Fig. 2 (IS2RE: average energy MAE vs throughput) and Fig. 3 (QM9: mean relative improvement vs
    time per epoch), ours and the paper's."""
    fig2 = []
    for m in cells_of(ctx["train"], "is2re"):
        mae, _ = split_stat(m, "average", "energy_mae")
        tp = bench_throughput(ctx["benchmark"], m["model"], m["symmetry"], graph_of(m))
        if mae is not None and tp:
            fig2.append({"source": "ours", "model": display(m["model"], m["symmetry"]), "samples_per_s": tp,
                         "energy_mae_eV": mae})
    for name, prow in load_paper()["table9"]["rows"].items():
        if prow.get("infer"):
            fig2.append({"source": "paper", "model": display(name), "samples_per_s": prow["infer"],
                         "energy_mae_eV": prow["energy_mae"]["average"]})
    fig3 = []
    for c, r in qm9["results"].items():
        rel = qm9["relative_improvement"].get(c, {})
        if rel.get("mean") is not None and r["epoch_seconds"]:
            fig3.append({"source": "ours", "model": display(r["model"], r["symmetry"]), "epoch_seconds":
                         r["epoch_seconds"], "rel_improvement_mean": rel["mean"], "rel_improvement_std": rel["std"]})
    for name, prow in load_paper()["table8"]["rows"].items():
        if prow.get("epoch_s"):
            ri = prow.get("rel_improvement", {"mean": 0.0, "std": 0.0}) if name != "schnet" else \
                {"mean": 0.0, "std": 0.0}
            fig3.append({"source": "paper", "model": display(name), "epoch_seconds": prow["epoch_s"],
                         "rel_improvement_mean": ri["mean"], "rel_improvement_std": ri["std"]})
    return {"fig2_pareto_is2re": fig2, "fig3_pareto_qm9": fig3}


def write_plot_data(data: dict[str, list[dict[str, Any]]], reports: Path) -> None:
    folder = reports / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    for name, pts in data.items():
        fields = sorted({k for p in pts for k in p}, key=lambda k: (k not in ("source", "model"), k))
        with (folder / f"{name}.csv").open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields or ["source", "model"])
            w.writeheader()
            w.writerows(pts)


def draw_figures(data: dict[str, list[dict[str, Any]]], profile: str, reports: Path) -> list[str]:
    """Fig. 2 and Fig. 3 as PNGs: the paper's points and ours side by side (their axes differ: OC20/QM9 on a GPU
    vs the embedded sets on this CPU), one marker per model, log-scaled speed axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = reports / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    markers = "o s D ^ v P X * h < > p d".split()
    written = []
    specs = {
        "fig2_pareto_is2re": ("samples_per_s", "energy_mae_eV", "inference throughput (samples/s, log scale)",
                              "IS2RE energy MAE, mean of 4 val splits (eV)", "Fig. 2 — IS2RE Pareto"),
        "fig3_pareto_qm9": ("epoch_seconds", "rel_improvement_mean", "training time per epoch (s, log scale)",
                            "mean relative improvement over SchNet (Eq. 11)", "Fig. 3 — QM9 Pareto"),
    }
    for name, (xk, yk, xl, yl, title) in specs.items():
        pts = data[name]
        models = sorted({p["model"] for p in pts})
        style = {m: markers[i % len(markers)] for i, m in enumerate(models)}
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, source, sub in ((axes[0], "paper", "paper (OC20 / QM9, GPU)"),
                                (axes[1], "ours", f"ours (embedded data, profile {profile}, CPU)")):
            sel = [p for p in pts if p["source"] == source]
            for p in sel:
                ax.scatter(p[xk], p[yk], marker=style[p["model"]], s=60, label=p["model"])
                if "rel_improvement_std" in p and p.get("rel_improvement_std"):
                    ax.errorbar(p[xk], p[yk], yerr=p["rel_improvement_std"], fmt="none", alpha=0.4)
            ax.set_xscale("log")
            ax.set_xlabel(xl)
            ax.set_ylabel(yl)
            ax.set_title(sub)
            ax.grid(alpha=0.3)
            if sel:
                ax.legend(fontsize=7, loc="best")
            else:
                ax.text(0.5, 0.5, "no measurement", ha="center", va="center", transform=ax.transAxes)
        fig.suptitle(title + (" (better: right and down)" if name.startswith("fig2") else " (better: left and up)"))
        fig.tight_layout()
        fig.savefig(folder / f"{name}.png", dpi=120)
        plt.close(fig)
        written.append(f"figures/{name}.png")
    return written


SCALING_METRICS = {"energy_mae": "energy MAE (eV)", "force_mae": "force MAE (eV/Å)"}


def draw_scaling(scaling: dict[str, Any] | None, reports: Path) -> list[str]:
    """One figure per task of the scaling stage: each model's error on ``val_id`` against its training-set size
    (log-log), mean and 95% band over seeds (seaborn), one panel per metric; the log-log slopes in the legend."""
    if not scaling or not scaling.get("cells"):
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    rows = []
    for e in scaling["cells"].values():
        for frac, per_split in e["by_fraction"].items():
            split = "val_id" if "val_id" in per_split else next(iter(per_split))
            for metric, vals in per_split[split].items():
                slope = e.get("loglog_slopes", {}).get(split, {}).get(metric, {}).get("slope")
                label = display(e["model"], e["symmetry"]) + (f" (slope {slope:.2f})" if slope is not None else "")
                rows += [{"task": e["task"], "model": label, "metric": metric, "split": split,
                          "train_graphs": e["train_sizes"][frac], "error": v} for v in vals]
    df = pd.DataFrame(rows)
    folder = reports / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for task, sub in df.groupby("task"):
        metrics = [m for m in SCALING_METRICS if m in set(sub["metric"])]
        fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.2), squeeze=False)
        for ax, metric in zip(axes[0], metrics, strict=True):
            d = sub[sub["metric"] == metric]
            sns.lineplot(data=d, x="train_graphs", y="error", hue="model", marker="o", errorbar=("ci", 95), ax=ax)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("training graphs (log)")
            ax.set_ylabel(f"{SCALING_METRICS[metric]} on {d['split'].iloc[0]} (log)")
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
        fig.suptitle(f"{task.upper()}: error against training-set size (mean and 95% band over seeds)")
        fig.tight_layout()
        name = f"figures/scaling_{task}.png"
        fig.savefig(reports / name, dpi=120)
        plt.close(fig)
        written.append(name)
    return written
