"""Stage `fetch`: the catalysis datasets (IS2RE, S2EF) as LMDBs under ``data/catalysis/{is2re,s2ef}/``.

``data.source: emt`` generates the embedded OC20-like set with ASE's EMT (deterministic by seed, resumable:
per-system results are cached in ``work/fetch/`` outside DVC's outputs). ``data.source: oc20`` downloads the
real OC20 LMDBs (checksummed, safe extraction) and converts their records to the project schema.
Writes the data card ``reports/data_card.md`` and ``metrics/fetch.json``.
"""

from __future__ import annotations

import sys
import time

from pipeline.config import ROOT, ConfigError, load_params
from pipeline.tracking import write_json

OUT = ROOT / "data" / "catalysis"


def main() -> int:
    try:
        params = load_params()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    d = params.active.data
    t0 = time.perf_counter()
    if d.source == "emt":
        from faenet.data.catalysis import data_card_markdown, generate_catalysis

        summary = generate_catalysis(
            OUT, n_systems=d.n_systems, metals=d.metals, facets=d.facets, adsorbates=d.adsorbates,
            ood_metals=d.ood_metals, ood_adsorbates=d.ood_adsorbates, val_id_fraction=d.val_id_fraction,
            test_fraction=d.test_fraction, slab_size=d.slab_size, seed=d.seed, workers=d.workers,
            cutoff=d.cutoff, max_num_neighbors=d.max_num_neighbors, s2ef_frame_stride=d.s2ef_frame_stride,
            fmax=d.fmax, max_steps=d.max_steps, work_dir=ROOT / "work" / "fetch", progress=True)
    else:
        from faenet.data.oc20 import data_card_markdown, prepare_oc20

        summary = prepare_oc20(ROOT / d.oc20_dir, OUT, is2re_size=d.oc20_is2re_size,
                               s2ef_size=d.oc20_s2ef_size)
    summary["profile"] = params.profile
    summary["stage_seconds"] = round(time.perf_counter() - t0, 1)
    card = ROOT / "reports" / "data_card.md"
    card.parent.mkdir(parents=True, exist_ok=True)
    card.write_text(data_card_markdown(summary))
    write_json(ROOT / "metrics" / "fetch.json", summary)
    print(f"fetch: {summary.get('counts', '')} in {summary['stage_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
