"""End to end: `dvc repro` on the smoke profile in a copy of the checkout, MLflow contents, no-op rerun."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.pipeline


def _copy_checkout(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        src = ROOT / f
        if src.is_file() and not f.startswith(("metrics/", "reports/", "dvc.lock")):
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
    return res


@pytest.fixture(scope="module")
def smoke_repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("smoke")
    _copy_checkout(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["profile"] = "smoke"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    _run(["git", "init", "-q"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "smoke"], repo, env)
    t0 = time.perf_counter()
    res = _run([str(BIN / "dvc"), "repro"], repo, env)
    seconds = time.perf_counter() - t0
    print(f"\nsmoke dvc repro: {seconds:.0f} s")
    return repo, env, res, seconds


def test_smoke_repro_writes_reports_and_metrics(smoke_repo):
    repo, _, _, _ = smoke_repo
    fetch = json.loads((repo / "metrics" / "fetch.json").read_text())
    assert fetch["profile"] == "smoke"
    assert (repo / "reports" / "data_card.md").read_text().strip()
    table = (repo / "reports" / "tables" / "table9.md").read_text()
    assert "faenet" in table and "schnet" in table
    trained = [json.loads(p.read_text()) for p in (repo / "metrics" / "train").glob("*.json")]
    done = [m for m in trained if m["trained"]]
    skipped = [m for m in trained if not m["trained"]]
    assert {m["cell"] for m in done} >= {"faenet-is2re-sfa", "faenet-is2re-full", "schnet-is2re-none"}
    assert all("reason" in m and len(m) == 3 for m in skipped)  # no numbers for untrained cells
    for m in done:
        mae = m["splits"]["val_id"]["energy_mae"]["mean"]
        assert 0 < mae < 100, m["cell"]
        assert len(m["mlflow_run_ids"]) == len(m["seeds"])


def test_mlflow_holds_runs_with_params_metrics_artifacts_and_tags(smoke_repo):
    repo, env, _, _ = smoke_repo
    code = (
        "import json, mlflow\n"
        "c = mlflow.tracking.MlflowClient()\n"
        "e = c.get_experiment_by_name('faenet-repro')\n"
        "runs = c.search_runs([e.experiment_id])\n"
        "r = [x for x in runs if x.data.tags.get('cell') == 'faenet-is2re-sfa'][0]\n"
        "arts = [a.path for a in c.list_artifacts(r.info.run_id)]\n"
        "hist = c.get_metric_history(r.info.run_id, 'val_id_energy_mae')\n"
        "print(json.dumps({'n': len(runs), 'params': r.data.params, 'tags': r.data.tags, 'arts': arts,\n"
        "                  'epochs': len(hist)}))\n")
    out = json.loads(_run([str(BIN / "python"), "-c", code], repo, env).stdout.strip().splitlines()[-1])
    assert out["n"] >= 6
    assert out["params"]["model"] == "faenet" and out["params"]["symmetry"] == "sfa"
    assert "train.lr" in out["params"] and "model.hidden_channels" in out["params"]
    for tag in ("git_commit", "git_dirty", "dvc_stage", "dataset_hash", "profile"):
        assert out["tags"][tag]
    assert out["tags"]["dvc_stage"] == "train@faenet-is2re-sfa"
    assert {"checkpoint", "metrics", "resolved_config.json"} <= set(out["arts"])
    assert out["epochs"] == 2  # per-epoch metrics, smoke trains IS2RE for 2 epochs


def test_second_repro_is_a_noop(smoke_repo):
    repo, env, _, _ = smoke_repo
    status = _run([str(BIN / "dvc"), "status"], repo, env).stdout
    assert "up to date" in status, status
    res = _run([str(BIN / "dvc"), "repro"], repo, env)
    assert "Running stage" not in res.stdout, res.stdout
