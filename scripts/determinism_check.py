"""Two smoke `dvc repro` runs of this checkout, one of them killed with SIGKILL mid-training and resumed; then
every metric of the two runs is compared to the last bit.

Checks what the README promises: a run is bit-identical to another run of the same code on the same machine,
and a killed-and-resumed run equals an uninterrupted one. Prints the kill-to-resumed time and, per results
and headline file, "identical" or the first differing leaves. Takes about two smoke runs (~6 min on 2 cores).

    .venv/bin/python scripts/determinism_check.py [--kill-after-stage train@faenet-is2re-sfa]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# Wall-clock and run-id leaves differ between any two runs; everything else must be equal.
VOLATILE = ("seconds", "run_id", "mlflow", "samples_per_s", "time", "rss", "memory", "started", "ended",
            "throughput", "_s", "git", "created", "ratio", "speed", "per_s")


def _copy_checkout(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        src = ROOT / f
        if src.is_file() and not f.startswith(("metrics/", "results/", "reports/", "dvc.lock")):
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    params = (dest / "params.yaml").read_text()
    (dest / "params.yaml").write_text(params.replace("\nprofile: default\n", "\nprofile: smoke\n", 1))


def _env(repo: Path) -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
            "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}", "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def _init(repo: Path) -> None:
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "smoke"]):
        subprocess.run(cmd, cwd=repo, env=_env(repo), check=True, capture_output=True)


def _repro(repo: Path, kill_marker: str | None = None) -> float | None:
    """Run `dvc repro`; with ``kill_marker``, SIGKILL the whole process group once a training checkpoint of
    that cell exists (mid-training) and return the time of the kill."""
    log = open(repo / "repro.log", "a")
    proc = subprocess.Popen([str(BIN / "dvc"), "repro"], cwd=repo, env=_env(repo), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    if kill_marker is None:
        if proc.wait() != 0:
            raise SystemExit(f"dvc repro failed in {repo}: see {repo / 'repro.log'}")
        return None
    ckpt_dir = repo / "work" / "ckpt" / kill_marker
    while proc.poll() is None:
        if ckpt_dir.exists() and any(p.suffix == ".pt" and ".final" not in p.name for p in ckpt_dir.iterdir()):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return time.perf_counter()
        time.sleep(0.05)
    raise SystemExit(f"the run finished before a checkpoint of {kill_marker} appeared; pick another cell")


def _leaves(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(obj, list):
        out = {}
        for i, v in enumerate(obj):
            out.update(_leaves(v, f"{prefix}[{i}]"))
        return out
    return {prefix: obj}


def _compare(a: Path, b: Path) -> list[str]:
    lines = []
    for fa in sorted([*(a / "results").rglob("*.json"), *(a / "metrics").rglob("*.json")]):
        rel = fa.relative_to(a)
        fb = b / rel
        if not fb.exists():
            lines.append(f"{rel}: missing in the second run")
            continue
        la, lb = _leaves(json.loads(fa.read_text())), _leaves(json.loads(fb.read_text()))
        diff = [k for k in sorted(set(la) | set(lb))
                if not any(v in k.lower() for v in VOLATILE) and la.get(k) != lb.get(k)]
        lines.append(f"{rel}: " + ("identical" if not diff else
                                   f"{len(diff)} leaves differ, e.g. " +
                                   "; ".join(f"{k}: {la.get(k)} vs {lb.get(k)}" for k in diff[:3])))
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kill-cell", default="faenet-is2re-sfa",
                    help="cell whose training is killed (SIGKILL of dvc and every child) at its first checkpoint")
    ap.add_argument("--keep", action="store_true", help="keep the two run folders")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="determinism-"))
    a, b = base / "uninterrupted", base / "killed"
    for repo in (a, b):
        repo.mkdir()
        _copy_checkout(repo)
        _init(repo)
    t0 = time.perf_counter()
    _repro(a)
    print(f"uninterrupted smoke run: {time.perf_counter() - t0:.0f} s", flush=True)
    t0 = time.perf_counter()
    killed_at = _repro(b, kill_marker=args.kill_cell)
    t_resume = time.perf_counter()
    _repro(b)
    print(f"killed run: killed {killed_at - t0:.0f} s in (first checkpoint of {args.kill_cell}), "
          f"resumed run finished {time.perf_counter() - t_resume:.0f} s after the kill", flush=True)
    log = (b / "repro.log").read_text()
    print("resume messages:", [ln.strip() for ln in log.splitlines() if "resumed" in ln][:5])
    for line in _compare(a, b):
        print(line)
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    else:
        print(f"run folders kept in {base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
