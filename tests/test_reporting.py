"""pipeline.reporting: results files are validated on load (errors name the file, key and stage), the package
stays torch-free, and the method-pair claims take their paper numbers from paper.yaml."""

import json
import re
import subprocess
import sys

import pytest

from pipeline.reporting import claims
from pipeline.reporting.schemas import ResultsSchemaError, load_results
from pipeline.reporting.table_writer import ROOT, paper_row


def _write(folder, name, data):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


CELL = {"cell": "faenet-is2re-sfa", "trained": True, "model": "faenet", "dataset": "is2re", "symmetry": "sfa",
        "seeds": [0], "splits": {"val_id": {"energy_mae": {"mean": 0.1, "std": 0.0, "per_seed": [0.1]}}}}


def test_load_results_reads_trained_cells_and_marks_absent_stages(tmp_path):
    _write(tmp_path, "train/faenet-is2re-sfa.json", CELL)
    _write(tmp_path, "train/schnet-qm9-none.json", {"cell": "schnet-qm9-none", "trained": False})
    out = load_results(tmp_path)
    assert list(out["train"]) == ["faenet-is2re-sfa"]  # untrained cells carry no metrics and are skipped
    assert out["train"]["faenet-is2re-sfa"] == CELL  # the report reads the file's own content
    assert {k for k, v in out.items() if v is None} == {"fetch", "benchmark", "symmetry", "expressivity",
                                                        "ablation", "scaling", "continuity"}


def test_a_bad_train_cell_names_the_file_the_key_and_the_stage(tmp_path):
    bad = {**CELL, "splits": {"val_id": {"energy_mae": {"mean": "high"}}}}
    path = _write(tmp_path, "train/faenet-is2re-sfa.json", bad)
    with pytest.raises(ResultsSchemaError) as err:
        load_results(tmp_path)
    msg = str(err.value)
    assert str(path) in msg and "splits.val_id.energy_mae.mean" in msg and "dvc repro train" in msg


def test_a_stage_file_missing_a_key_the_report_reads_fails_on_load(tmp_path):
    _write(tmp_path, "ablation.json", {"variants": {"FAENet (baseline)": {"mae_mev": {}}}})
    with pytest.raises(ResultsSchemaError, match=r"ablation\.json: key 'variants\.FAENet \(baseline\)\."
                                                 r"throughput'.*dvc repro ablation"):
        load_results(tmp_path)


def test_the_committed_results_validate():
    out = load_results(ROOT / "results")
    assert out["train"] and all(out[k] is not None for k in ("benchmark", "symmetry", "ablation", "expressivity"))


def test_method_pair_claims_take_the_paper_numbers_from_paper_yaml():
    metas = {meta["id"]: meta for meta, _ in claims._CLAIMS}
    for pair in claims.METHOD_PAIRS:
        assert not re.search(r"\d", pair.text + pair.section.replace("5.1", "").replace("D.2", ""))
        b, w = (paper_row(pair.table, f"faenet-{m}")["mae"] for m in (pair.better, pair.worse))
        assert metas[pair.id]["where"].endswith(f"({b:g} vs {w:g} meV)")
    assert metas["is2re-sfa-mae-vs-nofa"]["criterion"] == "SFA's mean MAE <= No-FA's"
    assert metas["s2ef-sfa-mae-vs-da"]["text"] == "SFA outperforms DA in MAE (S2EF)"


def test_the_reporting_package_imports_no_torch():
    """Every module of pipeline/reporting (found on disk, so a new one is covered) and the report stage."""
    modules = sorted(f"pipeline.reporting.{p.stem}" for p in (ROOT / "pipeline" / "reporting").glob("*.py")
                     if p.stem != "__init__")
    assert len(modules) >= 10
    code = (f"import sys, pipeline.report, {', '.join(modules)}; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torch_geometric')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_table9_fills_gemnet_t_beside_the_papers_row(monkeypatch):
    """A trained GemNet-T IS2RE cell is Table 9's GemNet-T row: ours (epoch time, the benchmark's throughput)
    beside the paper's numbers for GemNet-T, and no '(paper only)' GemNet-T row is left."""
    from pipeline.reporting import tables as T

    written = {}
    monkeypatch.setattr(T, "write_table", lambda name, title, header, rows, csv_rows, notes, **kw:
                        written.update({name: (header, rows, csv_rows)}))
    stat = {"mean": 0.5, "std": 0.0, "per_seed": [0.5]}
    cell = {"cell": "gemnet_t-is2re-none", "trained": True, "model": "gemnet_t", "dataset": "is2re",
            "symmetry": "none", "seeds": [0], "epoch_seconds_mean": 5.4,
            "splits": {s: {"energy_mae": stat, "energy_ewt": stat} for s in T.OC20_SPLITS}}
    bench = {"protocols": {"same_graph_full": {"profile": {"gemnet_t/none": "m1"}}},
             "measurements": [{"id": "m1", "inference": {"samples_per_s": 12.0}}]}
    T.table_oc20("is2re", {"train": {cell["cell"]: cell}, "benchmark": bench}, "default")
    _, rows, csv_rows = written["table9"]
    ours = [r for r in csv_rows if r["model"] == "gemnet_t" and not r.get("paper_only")]
    assert len(ours) == 1 and ours[0]["infer_samples_per_s"] == 12.0
    assert ours[0]["paper_infer"] == paper_row("table9", "gemnet_t")["infer"]
    assert not [r for r in csv_rows if r["model"] == "gemnet_t" and r.get("paper_only")]
    assert any(r[0] == "GemNet-T" for r in rows)
