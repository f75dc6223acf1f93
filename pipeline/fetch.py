"""Stage `fetch`: every dataset of the profile as LMDBs under ``data/<task>/`` (is2re, s2ef, qm7x, qm9, md17).

Catalysis (``data.catalysis.source``): ``emt`` generates the embedded OC20-like set with ASE's EMT
(deterministic by seed, resumable: per-system results are cached in ``work/fetch/catalysis``); ``oc20``
downloads the real OC20 (checksummed, safe extraction) and converts its records to the project schema.
Molecules (``data.qm7x.source``, ``data.qm9.source``): ``embedded`` builds the QM7-X-like / QM9-like sets
(RDKit conformers, GFN2-xTB labels, per-molecule cache in ``work/fetch/<task>``); ``real`` downloads and
converts QM7-X (Zenodo HDF5) and QM9 (PyG's raw files). MD17 (``data.md17.source``): ``embedded`` runs GFN2-xTB
Langevin trajectories (``faenet.data.md17``, per-trajectory cache in ``work/fetch/md17``); ``real`` converts the
rMD17 npz files found in ``data.md17.raw_dir``. Each ``data/<task>/summary.json`` describes its set.
Writes the data card ``reports/data_card.md``, ``results/fetch.json`` (hashes, sizes, timings) and its headline
``metrics/fetch.json`` (DVC metric: ``headline``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from faenet.tasks import TASKS
from pipeline.config import CATALYSIS, ROOT, CatalysisData, MD17Data, Params, QM7XData, QM9Data, stage_main
from pipeline.tracking import write_json

DATA = ROOT / "data"
WORK = ROOT / "work" / "fetch"
RESULTS_PATH = ROOT / "results" / "fetch.json"
HEADLINE_PATH = ROOT / "metrics" / "fetch.json"


def _write_summary(folder: Path, summary: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")


def fetch_catalysis(d: CatalysisData) -> dict[str, Any]:
    if d.source == "emt":
        from faenet.data.catalysis import generate_catalysis

        summary = generate_catalysis(
            DATA, n_systems=d.n_systems, metals=d.metals, facets=d.facets, adsorbates=d.adsorbates,
            alloys=d.alloys, ood_alloys=d.ood_alloys, ood_adsorbates=d.ood_adsorbates,
            val_id_fraction=d.val_id_fraction, test_fraction=d.test_fraction, slab_size=d.slab_size, seed=d.seed,
            workers=d.workers,
            cutoff=d.cutoff, max_num_neighbors=d.max_num_neighbors, s2ef_frame_stride=d.s2ef_frame_stride,
            fmax=d.fmax, max_steps=d.max_steps, work_dir=WORK / "catalysis", progress=True,
            summary_path=None)
    else:
        from faenet.data.oc20 import prepare_oc20

        summary = prepare_oc20(ROOT / d.oc20_dir, DATA, is2re_size=d.oc20_is2re_size, s2ef_size=d.oc20_s2ef_size)
    # What the data determine goes into the DVC outputs (same inputs -> same bytes); timings do not.
    stable = {k: v for k, v in summary.items() if k not in TIMING_KEYS}
    for task in CATALYSIS:
        _write_summary(DATA / task, {**stable, "task": task})
    return summary


TIMING_KEYS = ("generation_seconds", "compute_seconds", "systems_computed", "systems_from_cache",
               "workers", "seconds_per_system", "timing")


def fetch_qm7x(d: QM7XData) -> dict[str, Any]:
    out = DATA / "qm7x"
    if d.source == "embedded":
        from faenet.data.molecules import generate_qm7x_like

        summary = generate_qm7x_like(
            out, n_molecules=d.n_molecules, conformers_per_molecule=d.conformers_per_molecule, seed=d.seed,
            workers=d.workers, n_equilibrium=d.n_equilibrium, displacement=d.displacement,
            unknown_fraction=d.unknown_fraction, val_ood_fraction=d.val_ood_fraction,
            val_id_fraction=d.val_id_fraction, cutoff=d.cutoff, max_neighbors=d.max_num_neighbors,
            cache_dir=WORK / "qm7x", progress=True)
    else:
        from faenet.data.qm7x import download_qm7x, write_qm7x_lmdbs

        raw = ROOT / d.raw_dir
        paths = download_qm7x(raw, d.set_ids)
        sizes = write_qm7x_lmdbs(paths, out, dupmols=raw / "DupMols.dat", cutoff=d.cutoff,
                                 max_neighbors=d.max_num_neighbors)
        summary = {"dataset": "qm7x", "source": "Zenodo record 4288677 (PBE0+MBD)", "sizes": sizes,
                   "set_ids": d.set_ids, "split_roles": {"known": "val_id", "unknown": "test"}}
        _write_summary(out, summary)
    return summary


def fetch_qm9(d: QM9Data) -> dict[str, Any]:
    out = DATA / "qm9"
    if d.source == "embedded":
        from faenet.data.molecules import QM9_LIKE_TARGETS, generate_qm9_like

        summary = generate_qm9_like(out, n_molecules=d.n_molecules, seed=d.seed, workers=d.workers,
                                    n_trials=d.n_trials, polarizability=d.polarizability, cutoff=d.cutoff,
                                    max_neighbors=d.max_num_neighbors, cache_dir=WORK / "qm9", progress=True)
        summary["target_names"] = [n for n, _, _ in QM9_LIKE_TARGETS]
        summary["target_units"] = {n: u for n, u, _ in QM9_LIKE_TARGETS}
    else:
        from faenet.data.qm9 import TARGETS, download_qm9, write_qm9_lmdbs

        raw = download_qm9(ROOT / d.raw_dir)
        sizes = write_qm9_lmdbs(raw, out, n_train=d.n_train, n_val=d.n_val, cutoff=d.cutoff,
                                max_neighbors=d.max_num_neighbors)
        summary = {"dataset": "qm9", "source": "PyG raw files (gdb9.sdf, gdb9.sdf.csv, uncharacterized.txt)",
                   "sizes": sizes, "target_names": [t.name for t in TARGETS],
                   "target_units": {t.name: t.unit for t in TARGETS}}
    _write_summary(out, {k: v for k, v in summary.items() if k not in TIMING_KEYS})
    return summary


def fetch_md17(d: MD17Data) -> dict[str, Any]:
    out = DATA / "md17"
    if d.source == "embedded":
        from faenet.data.md17 import generate_md17_like

        return generate_md17_like(
            out, molecules=d.molecules, n_trajectories=d.n_trajectories, frames_per_trajectory=d.frames_per_trajectory,
            seed=d.seed, stride=d.stride, equilibration_steps=d.equilibration_steps, temperature_K=d.temperature_K,
            timestep_fs=d.timestep_fs, friction_per_fs=d.friction_per_fs, val_fraction=d.val_fraction,
            test_fraction=d.test_fraction, workers=d.workers, cutoff=d.cutoff, max_neighbors=d.max_num_neighbors,
            cache_dir=WORK / "md17", progress=True)
    from faenet.data.md17 import write_rmd17_lmdbs

    return write_rmd17_lmdbs(ROOT / d.raw_dir, out, molecules=d.molecules, n_frames=d.n_frames, seed=d.seed,
                             val_fraction=d.val_fraction, test_fraction=d.test_fraction, cutoff=d.cutoff,
                             max_neighbors=d.max_num_neighbors)


#: Molecular sets: (data config section = task, fetch function); catalysis holds both OC20 tasks.
MOLECULE_FETCHERS = {"qm7x": fetch_qm7x, "qm9": fetch_qm9, "md17": fetch_md17}


def main() -> int:
    return stage_main(fetch_all)


def fetch_all(params: Params) -> int:
    d = params.active.data
    t0 = time.perf_counter()
    summaries: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for name, fn, cfg in (("catalysis", fetch_catalysis, d.catalysis),
                          *((t, fn, getattr(d, t)) for t, fn in MOLECULE_FETCHERS.items())):
        t = time.perf_counter()
        summaries[name] = fn(cfg)
        seconds[name] = round(time.perf_counter() - t, 1)
        print(f"fetch {name}: {summaries[name].get('counts') or summaries[name].get('sizes')} in {seconds[name]} s",
              flush=True)
    from faenet.data.dataset import content_hash

    hashes = {task: content_hash(DATA / task) for task in TASKS}
    card = ROOT / "reports" / "data_card.md"
    card.parent.mkdir(parents=True, exist_ok=True)
    card.write_text(data_card(params.profile, summaries, hashes))
    result = {
        "profile": params.profile, "content_hashes": hashes, "stage_seconds": round(time.perf_counter() - t0, 1),
        "seconds": seconds,
        "sizes": {t: summaries["catalysis"]["counts"][t] if t in CATALYSIS else summaries[t]["sizes"] for t in TASKS},
        "degenerate_frames": {k: summaries[k].get("degenerate_frames") for k in MOLECULE_FETCHERS},
        "catalysis": {k: v for k, v in summaries["catalysis"].items() if k in TIMING_KEYS}}
    write_json(RESULTS_PATH, result)
    write_json(HEADLINE_PATH, headline(result))
    return 0


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The stage's DVC metric: the split sizes of every dataset and the stage's wall time (``result``: the
    stage's full results, ``results/fetch.json``)."""
    return {"profile": result["profile"], "sizes": result["sizes"], "stage_seconds": result["stage_seconds"]}


def data_card(profile: str, summaries: dict[str, Any], hashes: dict[str, str]) -> str:
    from faenet.data.md17 import data_card_markdown as md17_card
    from faenet.data.molecules import data_card_markdown as molecules_card

    cat = summaries["catalysis"]
    if cat.get("source") == "emt":
        from faenet.data.catalysis import data_card_markdown as catalysis_card
    else:
        from faenet.data.oc20 import data_card_markdown as catalysis_card
    parts = [f"# Data card (profile `{profile}`)", "",
             "Written by stage `fetch`. Sections: catalysis (IS2RE, S2EF), QM7-X, QM9, MD17.", "",
             "| data | content hash (sha256 over record values) |", "|---|---|"]
    parts += [f"| {k} | `{v}` |" for k, v in hashes.items()]
    parts += ["", _demote(catalysis_card(cat)), "", _demote(molecules_card(summaries["qm7x"])), "",
              _demote(molecules_card(summaries["qm9"])), "", _demote(md17_card(summaries["md17"]))]
    return "\n".join(parts).rstrip() + "\n"


def _demote(md: str) -> str:
    """Sub-documents' headings one level down, under the card's title."""
    return "\n".join("#" + line if line.startswith("#") else line for line in md.splitlines())


if __name__ == "__main__":
    sys.exit(main())
