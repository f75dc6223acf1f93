"""DVC validates params.yaml first: a typo fails the `validate` stage with one line naming the key, and `dvc repro`
stops there, before it deletes any stage's outputs (it deletes a stage's outputs before running it).

Runs DVC in a copy of the checkout; only the `validate` stage runs (and fails), so no real stage does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.pipeline


def _copy_checkout(dest: Path) -> None:
    """Tracked and untracked-not-ignored files, committed metrics/ and reports/ and dvc.lock included."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for f in files:
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    repo = tmp_path_factory.mktemp("validate")
    _copy_checkout(repo)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)
    return repo, env


def test_a_params_typo_stops_dvc_before_any_output_is_deleted(repo):
    root, env = repo
    kept = [root / "metrics" / "fetch.json", root / "reports" / "data_card.md"]
    before = {p: p.read_bytes() for p in kept}
    params = (root / "params.yaml").read_text()
    anchor = "        n_systems: 900\n"
    assert anchor in params
    (root / "params.yaml").write_text(params.replace(anchor, "        n_sytems: 900\n", 1))

    res = subprocess.run([str(BIN / "dvc"), "repro", "fetch"], cwd=root, env=env, capture_output=True, text=True)

    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "error: params.yaml: profiles.default.data.catalysis.n_sytems: unknown key" in out, out
    assert "allowed here:" in out and "'n_systems'" in out, out
    assert "Traceback" not in out, out
    assert "Running stage 'fetch'" not in out, out
    for p in kept:  # DVC never reached fetch, so it deleted none of its outputs
        assert p.exists() and p.read_bytes() == before[p], p
