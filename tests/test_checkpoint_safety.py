"""faenet.checkpoint: no load site runs code from a file, corrupt checkpoints are set aside and resume still gives
the uninterrupted result, and a crash while saving leaves the previous checkpoint loadable."""

import pathlib
import pickle
import random
import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch_geometric.data import Data

import pipeline.runs
from faenet.benchmarking import load_graphs, save_graphs
from faenet.checkpoint import (
    CorruptCheckpointError,
    UnsafeCheckpointError,
    load_checkpoint,
    prev_path,
    resume_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from faenet.training import TrainSettings, train
from pipeline.symmetry_inputs import CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")


class _Payload:
    """Unpickling this creates ``marker``: what a crafted checkpoint would do with os.system."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _plant(path: pathlib.Path, marker: pathlib.Path, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = {"model": _Payload(marker), "settings_digest": "x"}
    if fmt == "torch":
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def test_payload_is_live_without_the_guard(tmp_path):
    """The planted payload really runs under plain pickle, so "marker not created" below means refused."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


class TinyModel(nn.Module):
    """E = sum_i (a[z_i] + w . pos_i): a few parameters, microseconds per step."""

    def __init__(self) -> None:
        super().__init__()
        self.atom = nn.Embedding(10, 1)
        self.lin = nn.Linear(3, 1)

    def forward(self, data):
        e_node = self.atom(data.atomic_numbers).squeeze(-1) + self.lin(data.pos).squeeze(-1)
        return {"energy": torch.zeros(data.num_graphs).index_add(0, data.batch, e_node)}


def _records(n: int = 8) -> list[Data]:
    g = torch.Generator().manual_seed(0)
    out = []
    for k in range(n):
        na = 3 + k % 2
        z = torch.randint(1, 9, (na,), generator=g)
        out.append(Data(pos=torch.randn(na, 3, generator=g), atomic_numbers=z, natoms=na,
                        y=float(z.sum()) * 0.1 + float(torch.rand(1, generator=g))))
    return out


SETTINGS = TrainSettings(epochs=4, batch_size=3, lr=1e-2, seed=1)


def _train(ckpt: pathlib.Path | None, stop: int | None = None):
    torch.manual_seed(0)
    model = TinyModel()
    res = train(model, _records(), {"val": _records(4)}, SETTINGS, False, checkpoint_path=ckpt, progress=False,
                stop_after_epoch=stop)
    return model, res


@pytest.fixture(scope="module")
def uninterrupted():
    return _train(None)[0]


def _same_params(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters(), strict=True))


# ---------------------------------------------------------------------------------------------------------
# Payloads at every load site
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["torch", "pickle"])
def test_payload_in_training_checkpoint_is_refused(tmp_path, fmt):
    ckpt, marker = tmp_path / "ckpt" / "run.pt", tmp_path / "ran"
    _plant(ckpt, marker, fmt)
    with pytest.raises(UnsafeCheckpointError) as info:
        _train(ckpt)
    msg = str(info.value)
    assert str(ckpt) in msg and "Delete it" in msg and "not a checkpoint this project wrote" in msg
    assert not marker.exists()
    assert ckpt.exists() and not list(ckpt.parent.glob("*.corrupt-*"))  # left where it is, as evidence


def test_payload_in_prev_behind_a_corrupt_checkpoint_is_refused(tmp_path):
    ckpt, marker = tmp_path / "run.pt", tmp_path / "ran"
    ckpt.write_bytes(b"")
    _plant(prev_path(ckpt), marker, "torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(UnsafeCheckpointError, match=re.escape(str(prev_path(ckpt)))):
            _train(ckpt)
    assert not marker.exists()


def test_payload_in_final_state_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline.runs, "WORK", tmp_path / "work")
    spec = pipeline.runs.RunSpec(model_name="faenet", hparams={}, symmetry="none", task="is2re", seed=0,
                                 settings=SETTINGS, data_hash="0" * 64, folder="cell")
    assert spec.final_path.is_relative_to(tmp_path)
    marker = tmp_path / "ran"
    _plant(spec.final_path, marker, "torch")
    with pytest.raises(UnsafeCheckpointError, match=re.escape(str(spec.final_path))):
        pipeline.runs.load_final(spec)
    assert not marker.exists()


def test_payload_in_symmetry_stage_model_checkpoint_is_refused(tmp_path):
    from pipeline.symmetry_inputs import load_cell_checkpoint

    path, marker = tmp_path / "models" / "faenet-is2re-full" / "seed0.pt", tmp_path / "ran"
    _plant(path, marker, "torch")
    meta = {"cell": "faenet-is2re-full", "model": "faenet", "dataset": "is2re", "symmetry": "full"}
    with pytest.raises(CheckpointError) as info:
        load_cell_checkpoint(path, meta, 0, "0" * 64)
    assert str(path) in str(info.value) and "Delete it" in str(info.value) and "dvc repro train@" in str(info.value)
    assert not marker.exists()


def test_payload_in_benchmark_graphs_file_is_refused_and_real_file_round_trips(tmp_path):
    path, marker = tmp_path / "graphs.pt", tmp_path / "ran"
    torch.save({"graphs": {"full": [_Payload(marker)]}, "embedded": None, "n_embedded": None}, path)
    with pytest.raises(UnsafeCheckpointError, match=re.escape(str(path))):
        load_graphs(path)
    assert not marker.exists()
    recs = _records(3)
    save_graphs(path, {"full": recs}, recs[:1], 7)
    back = load_graphs(path)
    assert back["n_embedded"] == 7 and len(back["embedded"]) == 1
    for a, b in zip(recs, back["graphs"]["full"], strict=True):
        assert isinstance(b, Data) and list(a.keys()) == list(b.keys())
        assert torch.equal(a.pos, b.pos) and a.y == b.y and a.natoms == b.natoms


# ---------------------------------------------------------------------------------------------------------
# Corrupt checkpoints: set aside, resume from .prev or afresh, same result
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("damage", "stop", "resumed_from"), [
    ("truncated", 2, 1),  # .prev (epoch 1) is there: resume from it
    ("empty", 1, 0),  # first epoch: no .prev, start afresh
])
def test_corrupt_training_checkpoint_is_set_aside_and_result_unchanged(tmp_path, uninterrupted, damage, stop,
                                                                       resumed_from):
    ckpt = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        _train(ckpt, stop=stop)
    raw = ckpt.read_bytes()
    damaged = raw[: len(raw) // 2] if damage == "truncated" else b""
    ckpt.write_bytes(damaged)
    with pytest.warns(RuntimeWarning, match=re.escape(str(ckpt)) + ".*set aside as"):
        model, res = _train(ckpt)
    aside = list(tmp_path.glob("run.pt.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == damaged  # kept for inspection
    assert res.resumed_from_epoch == resumed_from
    assert _same_params(model, uninterrupted)


def test_bit_flip_in_a_tensor_is_corruption_not_silence(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint({"w": torch.arange(20000, dtype=torch.float32)}, path)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x10  # inside the 80 kB tensor: torch.load alone would not notice
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptCheckpointError, match=re.escape(str(path)) + ".*CRC-32"):
        load_checkpoint(path)


def test_corrupt_error_names_the_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(CorruptCheckpointError, match=re.escape(str(path)) + r".*0 bytes"):
        load_checkpoint(path)


# ---------------------------------------------------------------------------------------------------------
# Atomic save
# ---------------------------------------------------------------------------------------------------------

def test_crash_inside_torch_save_keeps_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint({"epoch": 1}, path)
    real_save = torch.save

    def crash(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint({"epoch": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(path) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]  # no temporary file left


def test_crash_before_the_final_rename_keeps_old_checkpoint(tmp_path, monkeypatch):
    import os

    path = tmp_path / "c.pt"
    save_checkpoint({"epoch": 1}, path)
    save_checkpoint({"epoch": 2}, path)
    assert load_checkpoint(prev_path(path)) == {"epoch": 1}
    real_replace = os.replace

    def crash(src, dst):
        if pathlib.Path(dst) == path:
            raise OSError("killed (simulated)")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint({"epoch": 3}, path)
    monkeypatch.setattr(os, "replace", real_replace)
    assert load_checkpoint(path) == {"epoch": 2}
    assert resume_checkpoint(path) == ({"epoch": 2}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "c.pt.prev"]


def test_rng_state_round_trips_weights_only(tmp_path):
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    np.random.standard_normal()  # numpy's cached Gaussian is part of the state
    random.gauss(0, 1)
    save_checkpoint({"rng": rng_state()}, tmp_path / "r.pt")
    expect = (random.random(), random.gauss(0, 1), float(np.random.standard_normal()), float(torch.rand(1)))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    assert (random.random(), random.gauss(0, 1), float(np.random.standard_normal()), float(torch.rand(1))) == expect


def test_link_or_copy_shares_the_file_and_replaces_the_old_one(tmp_path):
    from faenet.checkpoint import link_or_copy

    src = tmp_path / "work" / "seed0-key.final.pt"
    save_checkpoint({"w": torch.ones(3)}, src, keep_prev=False)
    dst = tmp_path / "models" / "cell" / "seed0.pt"
    dst.parent.mkdir(parents=True)
    dst.write_bytes(b"an older output")
    link_or_copy(src, dst)
    assert dst.read_bytes() == src.read_bytes() and dst.stat().st_ino == src.stat().st_ino  # one copy on disk
    assert sorted(p.name for p in dst.parent.iterdir()) == ["seed0.pt"]  # no temporary file left
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "missing.pt"))):
        link_or_copy(tmp_path / "missing.pt", dst)
