"""MLflow runs of killed processes do not stay RUNNING, finished runs are logged once with their real times
(pipeline.tracking.log_finished_run, pipeline.runs.train_or_reuse).

One file-backed SQLite store for the module (creating one costs seconds); each test uses its own run names.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import pipeline.runs
from faenet.throughput import oc20_like_slabs
from faenet.training import TrainSettings, train
from pipeline.runs import RunSpec, build_wrapped, train_or_reuse
from pipeline.tracking import EXPERIMENT, RUN_KEY_TAG, log_finished_run

HPARAMS = {"hidden_channels": 32, "num_filters": 8, "num_gaussians": 4, "num_interactions": 1,
           "tag_hidden_channels": 4, "pg_hidden_channels": 4, "cutoff": 5.0}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """``(MlflowClient, experiment id, tmp dir)`` of a fresh store; work/ and mlruns/ under the tmp dir."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("tracking")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(root)  # MLflow's default artifact root is ./mlruns
        mp.setattr(pipeline.runs, "WORK", root / "work")
        client = MlflowClient(uri)
        yield client, client.create_experiment(EXPERIMENT), root


def _runs(client, exp_id: str, name: str) -> list:
    return [r for r in client.search_runs([exp_id], max_results=1000) if r.info.run_name == name]


def _sets() -> dict[str, list]:
    g = torch.Generator().manual_seed(0)
    out = {}
    for k, split in enumerate(("train", "val")):
        recs = oc20_like_slabs(4 if split == "train" else 2, size=(2, 2, 2), seed=k, cutoff=5.0, max_neighbors=20)
        for r in recs:
            r.y = float(torch.randn(1, generator=g))
        out[split] = recs
    return out


def test_resume_marks_the_killed_attempt_killed_and_logs_one_finished_run(store, capsys, one_thread):
    client, exp_id, _ = store
    spec = RunSpec(model_name="faenet", hparams=HPARAMS, symmetry="none", task="is2re", seed=0,
                   settings=TrainSettings(epochs=2, batch_size=2, eval_batch_size=2, seed=0), data_hash="test",
                   folder="resume", tags={"dvc_stage": "test"}, frame_dim=2)
    sets = _sets()
    # The killed attempt: its checkpoint after epoch 1, and its MLflow run left RUNNING (SIGKILL ends nothing).
    _, wrapped = build_wrapped(spec)
    with pytest.raises(KeyboardInterrupt):  # train's own kill simulation
        train(wrapped, sets["train"], {"val": sets["val"]}, spec.settings, False, checkpoint_path=spec.ckpt_path,
              progress=False, stop_after_epoch=1)
    killed = client.create_run(exp_id, run_name=spec.name, tags=spec.mlflow_tags).info.run_id
    # Not this identity: another key under the same name, the same key under another name.
    other_key = client.create_run(exp_id, run_name=spec.name, tags={**spec.mlflow_tags, RUN_KEY_TAG: "0" * 16})
    other_name = client.create_run(exp_id, run_name=spec.name + "-b", tags=spec.mlflow_tags)

    record = train_or_reuse(spec, sets, ["val"], False, 2)

    out = capsys.readouterr().out
    assert f"MLflow run {killed} was left RUNNING" in out and "resumed from epoch 1" in out
    assert client.get_run(killed).info.status == "KILLED"
    for r in (other_key, other_name):
        assert client.get_run(r.info.run_id).info.status == "RUNNING"
    finished = [r for r in _runs(client, exp_id, spec.name) if r.info.status == "FINISHED"]
    assert [r.info.run_id for r in finished] == [record["run_id"]]
    assert finished[0].data.tags[RUN_KEY_TAG] == spec.key
    # The resumed run holds every epoch, the killed attempt's included: epoch 2 at the time it ended, epoch 1
    # (whose time is lost with the killed process) at the run's start; the run spans its real start and end.
    hist = client.get_metric_history(record["run_id"], "val_energy_mae")
    assert sorted((m.step, m.timestamp) for m in hist) == [(1, int(record["started"] * 1000)),
                                                            (2, int(record["epoch_ended"][1] * 1000))]
    assert [h["epoch"] for h in record["history"]] == [1, 2] and record["epoch_ended"][0] is None
    info = client.get_run(record["run_id"]).info
    assert (info.start_time, info.end_time) == (int(record["started"] * 1000), int(record["ended"] * 1000))
    assert record["started"] < record["epoch_ended"][1] <= record["ended"]
    pointer = client.download_artifacts(record["run_id"], "checkpoint/checkpoint.json")
    assert json.loads(Path(pointer).read_text())["bytes"] == spec.final_path.stat().st_size

    # Finished: a rerun reuses the record and touches no run.
    assert train_or_reuse(spec, sets, ["val"], False, 2)["run_id"] == record["run_id"]
    assert len(_runs(client, exp_id, spec.name)) == 3

    # Trained but not logged (killed between the two): logged on the next run, not trained again (no data).
    spec.result_path.write_text(json.dumps({**record, "run_id": None}))
    again = train_or_reuse(spec, {}, ["val"], False, 2)
    assert again["run_id"] not in (None, record["run_id"]) and again["final"] == record["final"]
    assert json.loads(spec.result_path.read_text())["run_id"] == again["run_id"]
    assert client.get_run(again["run_id"]).info.status == "FINISHED"


def test_log_finished_run_marks_a_stale_attempt_killed(store):
    client, exp_id, root = store
    tags = {RUN_KEY_TAG: "abc123", "target": "energy"}
    stale = client.create_run(exp_id, run_name="parallel-seed0", tags=tags).info.run_id
    (root / "rec.json").write_text("{}")
    rid = log_finished_run("parallel-seed0", {"lr": 0.1}, tags, history=[{"step": 1, "loss": 0.5, "skip": None}],
                           metrics={"final_val_energy_mae": 0.2, "nan": float("nan")},
                           artifacts={"metrics": root / "rec.json"}, dicts={"resolved_config.json": {"a": 1}},
                           start_time=1_000.0, end_time=1_060.5)
    assert client.get_run(stale).info.status == "KILLED"
    run = client.get_run(rid)
    assert run.info.status == "FINISHED" and (run.info.start_time, run.info.end_time) == (1_000_000, 1_060_500)
    assert run.data.metrics == {"loss": 0.5, "final_val_energy_mae": 0.2}  # not-finite values are not logged
    assert run.data.params == {"lr": "0.1"} and run.data.tags["mlflow.user"]
    assert {a.path for a in client.list_artifacts(rid)} == {"metrics", "resolved_config.json"}


@pytest.mark.parametrize(("error", "status"), [(KeyboardInterrupt, "KILLED"), (SystemExit, "KILLED"),
                                               (RuntimeError, "FAILED")])
def test_log_finished_run_ends_killed_when_interrupted_failed_on_error(store, monkeypatch, error, status):
    from mlflow.tracking import MlflowClient

    client, exp_id, _ = store
    name = f"interrupted-{error.__name__}"

    def interrupted(*args, **kwargs):
        raise error()

    monkeypatch.setattr(MlflowClient, "log_dict", interrupted)  # the process is interrupted while logging
    with pytest.raises(error):
        log_finished_run(name, {"a": 1}, {RUN_KEY_TAG: "k"}, metrics={"m": 1.0}, dicts={"x.json": {}})
    (run,) = _runs(client, exp_id, name)
    assert run.info.status == status and run.info.end_time is not None
