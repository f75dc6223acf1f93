"""End to end: `dvc repro` on the smoke profile in a copy of the checkout, with a user's new baseline added the
documented way (one file in baselines/, one line in params.yaml); reports, metrics, MLflow, DVC commands, no-op."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from faenet.tasks import TASKS

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.pipeline

NEW_BASELINE = '''"""TinyNet: a user's baseline, added as one file (tests/test_pipeline.py)."""
import torch
from torch import nn
from torch_geometric.utils import scatter

from baselines.common import check_force_mode, edge_geometry, graph_index
from baselines.registry import register


@register("tinynet")
class TinyNet(nn.Module):
    force_modes = ("",)

    def __init__(self, hidden_channels: int = 16, cutoff: float = 6.0, regress_forces: str = ""):
        super().__init__()
        self.regress_forces = check_force_mode("TinyNet", regress_forces, self.force_modes)
        self.cutoff = cutoff
        self.emb = nn.Embedding(100, hidden_channels)
        self.out = nn.Linear(hidden_channels + 1, 1)

    def forward(self, data):
        batch, num_graphs = graph_index(data)
        edge_index, _, _, dist = edge_geometry(data, self.cutoff)
        inv = scatter(1.0 / dist, edge_index[1], dim=0, dim_size=data.pos.shape[0]).unsqueeze(-1)
        h = torch.cat([self.emb(data.atomic_numbers.long()), inv], dim=-1)
        return {"energy": scatter(self.out(h), batch, dim=0, dim_size=num_graphs).squeeze(-1)}
'''


def _copy_checkout(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        src = ROOT / f
        if src.is_file() and not f.startswith(("metrics/", "results/", "reports/", "dvc.lock")):
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)



def commit_copy(repo: Path, message: str) -> dict[str, str]:
    """Make the copied checkout ``repo`` a git repository with one commit (DVC wants one) and return the
    environment its ``dvc repro`` runs in: this venv first on PATH, no analytics, its own MLflow store."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    _run(["git", "init", "-q"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", message], repo, env)
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
    return res


@pytest.fixture(scope="module")
def smoke_repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("smoke")
    _copy_checkout(repo)
    # The user's additions: one file and one params line; nothing else changes.
    (repo / "baselines" / "tinynet.py").write_text(NEW_BASELINE)
    params = (repo / "params.yaml").read_text()
    anchor = "  schnet-is2re-none:"
    assert anchor in params
    new_line = "  tinynet-is2re-none: {model: tinynet, dataset: is2re, symmetry: none}\n"
    params = params.replace(anchor, new_line + anchor, 1)
    (repo / "params.yaml").write_text(params.replace("\nprofile: default\n", "\nprofile: smoke\n", 1))
    env = commit_copy(repo, "smoke")
    t0 = time.perf_counter()
    res = _run([str(BIN / "dvc"), "repro"], repo, env)
    seconds = time.perf_counter() - t0
    print(f"\nsmoke dvc repro: {seconds:.0f} s")
    return repo, env, res, seconds


def test_smoke_repro_writes_every_report(smoke_repo):
    repo, _, _, _ = smoke_repo
    fetch = json.loads((repo / "results" / "fetch.json").read_text())
    assert fetch["profile"] == "smoke" and set(fetch["content_hashes"]) == set(TASKS)
    assert (repo / "reports" / "data_card.md").read_text().strip()
    for n in (1, 2, 3, 4, 5, 6, 8, 9, 11, 12):
        md = (repo / "reports" / "tables" / f"table{n}.md").read_text()
        assert md.startswith("# Table") and "|" in md, n
        assert (repo / "reports" / "tables" / f"table{n}.csv").read_text().strip(), n
    for fig in ("fig2_pareto_is2re.png", "fig3_pareto_qm9.png"):
        assert (repo / "reports" / "figures" / fig).stat().st_size > 10_000
    claims = json.loads((repo / "reports" / "claims.json").read_text())
    assert len(claims["claims"]) >= 20
    assert {c["verdict"] for c in claims["claims"]} <= {"reproduced", "inconclusive", "contradicted",
                                                        "not measurable here"}
    assert "trend with data" in (repo / "reports" / "claims.md").read_text()
    # The scaling stage retrained the listed cells on half of the train split and the report drew its figure.
    scaling = json.loads((repo / "results" / "scaling.json").read_text())
    cell = scaling["cells"]["faenet-is2re-sfa"]
    assert set(cell["by_fraction"]) == {"0.5", "1"} and cell["train_sizes"]["0.5"] < cell["train_sizes"]["1"]
    assert (repo / "reports" / "figures" / "scaling_is2re.png").stat().st_size > 10_000
    prov = json.loads((repo / "reports" / "provenance.json").read_text())
    assert prov["git_commit"] and prov["params_hash"] and prov["dataset_hashes"]


def test_train_cells_trained_and_skipped(smoke_repo):
    repo, _, _, _ = smoke_repo
    cells = [json.loads(p.read_text()) for p in (repo / "results" / "train").glob("*.json")]
    done = {m["cell"]: m for m in cells if m["trained"]}
    skipped = [m for m in cells if not m["trained"]]
    assert {"faenet-is2re-sfa", "faenet-is2re-full", "schnet-is2re-none", "faenet-qm7x-sfa",
            "faenet-qm9-sfa"} <= set(done)
    assert all(set(m) == {"cell", "trained", "reason"} for m in skipped)  # no numbers for untrained cells
    for m in done.values():
        first = next(iter(m["splits"].values()))
        assert all(0 <= v["mean"] < 1e4 for v in first.values()), m["cell"]
        assert len(m["mlflow_run_ids"]) == len(m["seeds"]) * len(m["targets"])


def test_new_baseline_is_trained_and_reported(smoke_repo):
    repo, _, _, _ = smoke_repo
    m = json.loads((repo / "results" / "train" / "tinynet-is2re-none.json").read_text())
    assert m["trained"] and m["splits"]["val_id"]["energy_mae"]["mean"] > 0
    assert "tinynet" in (repo / "reports" / "tables" / "table9.md").read_text()
    bench = json.loads((repo / "results" / "benchmark.json").read_text())
    assert any(m["model"] == "tinynet" and m["inference"]["samples_per_s"] > 0 for m in bench["measurements"])


def test_mlflow_holds_runs_with_params_metrics_artifacts_and_tags(smoke_repo):
    repo, env, _, _ = smoke_repo
    code = (
        "import json, mlflow\n"
        "c = mlflow.tracking.MlflowClient()\n"
        "e = c.get_experiment_by_name('faenet-repro')\n"
        "runs = c.search_runs([e.experiment_id])\n"
        "r = [x for x in runs if x.data.tags.get('dvc_stage') == 'train@faenet-is2re-sfa'][0]\n"
        "arts = [a.path for a in c.list_artifacts(r.info.run_id)]\n"
        "hist = c.get_metric_history(r.info.run_id, 'val_id_energy_mae')\n"
        "print(json.dumps({'n': len(runs), 'params': r.data.params, 'tags': r.data.tags, 'arts': arts,\n"
        "                  'epochs': len(hist)}))\n")
    out = json.loads(_run([str(BIN / "python"), "-c", code], repo, env).stdout.strip().splitlines()[-1])
    assert out["n"] >= 10
    assert out["params"]["model"] == "faenet" and out["params"]["symmetry"] == "sfa"
    assert "train.lr" in out["params"] and "model.hidden_channels" in out["params"]
    for tag in ("git_commit", "git_dirty", "dvc_stage", "dataset_hash", "profile"):
        assert out["tags"][tag]
    assert out["tags"]["dvc_stage"] == "train@faenet-is2re-sfa"
    assert {"checkpoint", "metrics", "resolved_config.json"} <= set(out["arts"])
    assert out["epochs"] == 2  # per-epoch metrics, smoke trains IS2RE for 2 epochs


def test_dvc_metrics_and_plots_commands_work(smoke_repo):
    repo, env, _, _ = smoke_repo
    shown = _run([str(BIN / "dvc"), "metrics", "show"], repo, env).stdout
    assert "metrics/train/faenet-is2re-sfa.json" in shown and "metrics/benchmark.json" in shown
    assert "results/" not in shown  # the full results are outputs, not DVC metrics
    _run([str(BIN / "dvc"), "plots", "show", "-o", str(repo / "plots_html")], repo, env)
    assert (repo / "plots_html" / "index.html").stat().st_size > 1000


def test_second_repro_is_a_noop(smoke_repo):
    repo, env, _, _ = smoke_repo
    status = _run([str(BIN / "dvc"), "status"], repo, env).stdout
    assert "up to date" in status, status
    t0 = time.perf_counter()
    res = _run([str(BIN / "dvc"), "repro"], repo, env)
    print(f"\nno-op dvc repro: {time.perf_counter() - t0:.1f} s")
    assert "Running stage" not in res.stdout, res.stdout
