"""MLflow wiring (only pipeline/ imports mlflow) and run provenance (git, dvc stage, versions)."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.config import ROOT

EXPERIMENT = "faenet-repro"
PACKAGES = ("torch", "torch-geometric", "numpy", "ase", "mendeleev", "mlflow", "dvc", "pydantic", "tblite", "rdkit")


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the SQLite store at the repository root (gitignored)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{ROOT / 'mlflow.db'}"


def git_info() -> dict[str, str]:
    def run(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return ""
    commit = run("rev-parse", "HEAD").strip() or "unknown"
    # dvc.lock and generated outputs change during a repro; they do not make the code dirty.
    dirty_lines = [ln for ln in run("status", "--porcelain", "--untracked-files=no").splitlines()
                   if not any(p in ln for p in ("dvc.lock", "metrics/", "results/", "reports/"))]
    return {"git_commit": commit, "git_dirty": str(bool(dirty_lines)).lower()}


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "absent"
    return out


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform()}


def provenance(extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {**git_info(), "packages": package_versions(), "machine": machine_info(), **(extra or {})}


def _experiment_id() -> str:
    """Point MLflow at the project store and return the project experiment's id (created if absent)."""
    import mlflow  # deferred: ~1.6 s import

    mlflow.set_tracking_uri(tracking_uri())
    exp = mlflow.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        location = None if os.environ.get("MLFLOW_TRACKING_URI") else (ROOT / "mlruns").as_uri()
        return mlflow.create_experiment(EXPERIMENT, artifact_location=location)
    return exp.experiment_id


def _params(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(k, str(v)[:500]) for k, v in params.items()]


RUN_KEY_TAG = "run_key"  # with the run name, a run's identity: a resumed run replaces its killed attempts


def end_stale_runs(client: Any, experiment_id: str, run_name: str, tags: Mapping[str, str]) -> list[str]:
    """Mark KILLED the RUNNING runs with ``run_name`` and the ``run_key`` tag of ``tags``; returns their ids.

    A run of a given identity is only ever logged by one process at a time (DVC runs one stage at a time, and
    only the parent process logs to MLflow), so a RUNNING one met when the identity starts again is a run
    whose process died (SIGKILL, SIGTERM, the OOM killer, a power cut) before it could end the run.
    Nothing is done without a ``run_key`` tag.
    """
    key = tags.get(RUN_KEY_TAG)
    if not key:
        return []
    if "'" in key:
        raise ValueError(f"MLflow tag {RUN_KEY_TAG}={key!r} of run {run_name!r} contains a quote; it must be a "
                         f"plain key (RunSpec.key is a hex digest)")
    stale = client.search_runs([experiment_id], f"tags.{RUN_KEY_TAG} = '{key}' and attributes.status = 'RUNNING'",
                               max_results=1000)
    ids = []
    for r in stale:
        if r.info.run_name == run_name:
            client.set_terminated(r.info.run_id, "KILLED")
            print(f"{run_name}: MLflow run {r.info.run_id} was left RUNNING by a killed process; marked KILLED",
                  flush=True)
            ids.append(r.info.run_id)
    return ids


def _interrupted(err: BaseException) -> bool:
    return isinstance(err, KeyboardInterrupt | SystemExit)


def _loggable(v: Any) -> bool:
    """A metric value MLflow should hold: a finite number (None, NaN and inf stay in the stages' JSON only)."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def log_finished_run(run_name: str, params: Mapping[str, Any], tags: Mapping[str, str], *,
                     metrics: Mapping[str, Any] | None = None, history: Sequence[Mapping[str, Any]] = (),
                     artifacts: Mapping[str, str | os.PathLike] | None = None,
                     dicts: Mapping[str, Any] | None = None, start_time: float | None = None,
                     end_time: float | None = None) -> str:
    """Log one finished unit of work as one MLflow run in the project experiment; returns the run id.

    The stages' one way to MLflow: they compute first, then log what they computed. The run holds

    - ``params`` (values as strings, cut to 500 characters) and ``tags`` (with MLflow's own: user, source);
    - ``metrics`` ``{name: value}`` at step 0, and ``history`` rows ``{"step": int, "time": Unix seconds or None,
      name: value, ...}`` (per-epoch or per-seed values at their steps, stamped with their own time when given);
      values that are not finite numbers are skipped;
    - ``artifacts`` ``{folder: file path}`` (copied into the run) and ``dicts`` ``{file name: JSON object}``;
    - its real ``start_time`` and ``end_time`` (Unix seconds; default now): metrics without a time of their own
      are stamped ``end_time``.

    Earlier RUNNING runs of the same identity (``run_name`` and tag ``run_key``) are marked KILLED first
    (:func:`end_stale_runs`). An exception while logging ends the run FAILED, KeyboardInterrupt or SystemExit
    KILLED; a process killed outright leaves it RUNNING until its identity is logged again.
    """
    import time

    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient
    from mlflow.tracking.context.registry import resolve_tags

    def ms(t: float) -> int:
        return int(t * 1000)

    client = MlflowClient(tracking_uri())
    exp_id = _experiment_id()
    end_stale_runs(client, exp_id, run_name, tags)
    run = client.create_run(exp_id, start_time=ms(start_time or time.time()), tags=resolve_tags(dict(tags)),
                            run_name=run_name)
    rid = run.info.run_id
    try:
        items = _params(params)
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            client.log_batch(rid, params=[Param(k, v) for k, v in items[i:i + 100]])
        end = ms(end_time or time.time())
        logged = [Metric(k, float(v), ms(row["time"]) if row.get("time") else end, int(row["step"]))
                  for row in history for k, v in row.items() if k not in ("step", "time") and _loggable(v)]
        logged += [Metric(k, float(v), end, 0) for k, v in (metrics or {}).items() if _loggable(v)]
        for i in range(0, len(logged), 1000):  # MLflow caps a batch at 1000 metrics
            client.log_batch(rid, metrics=logged[i:i + 1000])
        for folder, path in (artifacts or {}).items():
            client.log_artifact(rid, str(path), folder)
        for name, obj in (dicts or {}).items():
            client.log_dict(rid, obj, name)
        client.set_terminated(rid, "FINISHED", end_time=end)
    except BaseException as err:
        client.set_terminated(rid, "KILLED" if _interrupted(err) else "FAILED")
        raise
    return rid


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
