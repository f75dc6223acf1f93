"""Streaming data (issue 14): lazy LMDB reading through DataLoader workers, one-pass normaliser.

- A lazy ``GraphDataset`` returns the records of the in-memory one, byte for byte (``record_digest``).
- The worker loader (``faenet.training.train_loader``, 2 workers) yields the batches of the 1-process
  ``_epoch_loader`` and of the same sampler without workers, epoch after epoch (persistent workers).
- Each worker opens its own read-only LMDB environment (the parent's, inherited by fork, is not used), and a
  lazy dataset pickles without one (spawned workers).
- ``Normalizer.fit_stream`` equals ``Normalizer.fit``: bit for bit without an element shift, to float rounding
  with one; on the project's default data too when it is present (``data/``).
- Training streamed (0 and 2 workers) gives the parameters of training in memory, exactly.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader as TorchLoader
from torch.utils.data import Dataset
from torch_geometric.data import Data
from tqdm.auto import tqdm

from baselines import build_model
from faenet import distributed as ddp
from faenet.data.dataset import GraphDataset, is_streamed, record_digest
from faenet.data.store import write_lmdb
from faenet.graph import radius_graph
from faenet.symmetry import SymmetryWrapper
from faenet.training import Normalizer, TrainSettings, _epoch_loader, epoch_order, record_stream, train, train_loader

ROOT = Path(__file__).resolve().parents[1]
HPARAMS = {"hidden_channels": 32, "num_filters": 8, "num_interactions": 1, "num_gaussians": 8,
           "tag_hidden_channels": 0, "pg_hidden_channels": 4, "cutoff": 4.0, "regress_forces": ""}


def slab(k: int, elements: tuple[int, ...] = (29, 29, 8, 1, 6, 78)) -> Data:
    """A small slab record of the embedded catalysis schema: periodic in x, y; a radius graph with offsets."""
    g = torch.Generator().manual_seed(k)
    n = 5 + k % 4
    pos = torch.rand(n, 3, generator=g) * torch.tensor([5.0, 5.0, 3.0]) + torch.tensor([0.0, 0.0, 10.0])
    cell = torch.diag(torch.tensor([5.0, 5.0, 23.0])).reshape(1, 3, 3)
    pbc = torch.tensor([[True, True, False]])
    ei, off = radius_graph(pos.double(), 4.0, 12, cell[0].double(), pbc[0])
    z = torch.tensor([elements[(k + i) % len(elements)] for i in range(n)])
    y = float(0.3 * (z == 8).sum() - 0.1 * (z == 1).sum() + 0.05 * pos[:, 2].sum() - 0.5 * k / 7)
    return Data(pos=pos, atomic_numbers=z, natoms=n, tags=torch.tensor([0, 1] + [2] * (n - 2)),
                fixed=torch.tensor([1] + [0] * (n - 1)), cell=cell, pbc=pbc, edge_index=ei, cell_offsets=off,
                y=y, sid=k)


@pytest.fixture(scope="module")
def lmdb_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("stream")
    write_lmdb(d / "a.lmdb", [slab(k) for k in range(13)])  # two files: the global index crosses them
    write_lmdb(d / "b.lmdb", [slab(k) for k in range(13, 30)])
    return d


def test_lazy_dataset_returns_the_in_memory_records(lmdb_dir):
    mem, lazy = GraphDataset(lmdb_dir, "is2re"), GraphDataset(lmdb_dir, "is2re", in_memory=False)
    assert not is_streamed(mem) and is_streamed(lazy) and len(mem) == len(lazy) == 30
    assert all(record_digest(mem[i]) == record_digest(lazy[i]) for i in range(30))
    assert is_streamed(torch.utils.data.Subset(lazy, [1, 2]))


def _batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(b.sid.clone(), b.pos.clone()) for b in loader]


def test_two_workers_yield_the_batches_of_none(lmdb_dir):
    lazy, mem = GraphDataset(lmdb_dir, "is2re", in_memory=False), GraphDataset(lmdb_dir, "is2re")
    loader, sampler = train_loader(lazy, 4, seed=7, num_workers=2, dist=ddp.Dist(), cuda=False)
    from torch_geometric.loader import DataLoader

    for epoch in range(2):  # the same (persistent) workers serve both epochs, each in its own order
        sampler.set_epoch(epoch)
        got = _batches(loader)
        # the 1-process trainer's loader, iterated through tqdm as ``train`` does (tqdm draws one more base seed)
        want = _batches(tqdm(_epoch_loader(mem, 4, 7, epoch, False), disable=True))
        same_sampler = _batches(DataLoader(lazy, batch_sampler=sampler))  # the same sampler, no workers
        assert len(got) == len(want) == len(same_sampler) == 8
        for (sa, pa), (sb, pb), (sc, pc) in zip(got, want, same_sampler, strict=True):
            assert torch.equal(sa, sb) and torch.equal(pa, pb) and torch.equal(sa, sc) and torch.equal(pa, pc)
        assert torch.cat([s for s, _ in got]).tolist() == [int(mem[i].sid) for i in epoch_order(30, 7, epoch)]


class _WhoRead(Dataset):
    """Reads record ``i`` of a lazy dataset and says which process read it and which one opened the env."""

    def __init__(self, ds: GraphDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[int, int, int]:
        rec = self.ds[i]
        db = self.ds._locate(i)[0]
        return os.getpid(), self.ds.readers[db].env_pid, int(rec.sid)


def test_each_worker_opens_its_own_environment(lmdb_dir):
    lazy = GraphDataset(lmdb_dir, "is2re", in_memory=False)
    lazy[0], lazy[20]  # the parent has both environments open before the workers fork
    parent = os.getpid()
    assert {r.env_pid for r in lazy.readers} == {parent}
    rows = [row for part in TorchLoader(_WhoRead(lazy), batch_size=5, num_workers=2, collate_fn=list)
            for row in part]
    workers = {pid for pid, _, _ in rows}
    assert len(workers) == 2 and parent not in workers
    assert all(pid == env_pid for pid, env_pid, _ in rows)  # read through an environment of its own
    assert [sid for _, _, sid in rows] == list(range(30))
    assert int(lazy[29].sid) == 29 and {r.env_pid for r in lazy.readers} == {parent}  # the parent's still works
    clone = pickle.loads(pickle.dumps(lazy))  # what a spawned worker gets: no environment, opened on first read
    assert all(r._env is None and r.env_pid is None for r in clone.readers)
    assert int(clone[3].sid) == 3


@pytest.mark.parametrize("element_shift", [False, True])
@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_normaliser_equals_in_memory(lmdb_dir, element_shift, workers):
    mem, lazy = GraphDataset(lmdb_dir, "is2re"), GraphDataset(lmdb_dir, "is2re", in_memory=False)
    want = Normalizer.fit([mem[i] for i in range(len(mem))], True, element_shift)
    got = Normalizer.fit_stream(lambda: record_stream(lazy, workers), True, element_shift)
    if not element_shift:
        assert got == want  # the same reductions over the same float64 targets: bit for bit
        return
    assert got.mean == pytest.approx(want.mean, rel=1e-9, abs=1e-12)
    assert got.std == pytest.approx(want.std, rel=1e-9)
    assert len(got.element_shift) == len(want.element_shift) == 79
    assert got.element_shift == pytest.approx(want.element_shift, abs=1e-9)


@pytest.mark.parametrize("task,shift", [("is2re", False), ("qm7x", True), ("qm9", True)])
def test_streaming_normaliser_on_the_default_data(task, shift):
    path = ROOT / "data" / task / "train.lmdb"
    if not path.is_file():
        pytest.skip(f"{path} not generated (dvc repro fetch)")
    mem, lazy = GraphDataset(path, task), GraphDataset(path, task, in_memory=False)
    want = Normalizer.fit([mem[i] for i in range(len(mem))], True, shift)
    got = Normalizer.fit_stream(lambda: record_stream(lazy), True, shift)
    # measured on the default profile's data: mean/std agree to 3e-11 relative, shifts to 2e-12 eV
    assert got.mean == pytest.approx(want.mean, rel=1e-9) and got.std == pytest.approx(want.std, rel=1e-9)
    assert (got.element_shift is None) == (want.element_shift is None)
    if shift:
        assert got.element_shift == pytest.approx(want.element_shift, abs=1e-9)


def _train(train_set, val_set, workers: int):
    torch.manual_seed(0)
    net = build_model("faenet", **HPARAMS)
    s = TrainSettings(epochs=2, batch_size=4, lr=1e-2, warmup_steps=1, seed=3)
    res = train(SymmetryWrapper(net, "sfa", frame_dim=2), train_set, {"val_id": val_set}, s, False,
                progress=False, num_workers=workers)
    return net, res


def test_streamed_training_equals_in_memory(lmdb_dir, tmp_path):
    write_lmdb(tmp_path / "val.lmdb", [slab(k) for k in range(40, 46)])
    mem = (GraphDataset(lmdb_dir, "is2re"), GraphDataset(tmp_path / "val.lmdb", "is2re"))
    lazy = (GraphDataset(lmdb_dir, "is2re", in_memory=False),
            GraphDataset(tmp_path / "val.lmdb", "is2re", in_memory=False))
    net_a, res_a = _train(*mem, workers=0)
    # SFA draws a frame per graph from the global RNG: equal parameters also say the loaders drew nothing more
    for workers in (0, 2):
        net_b, res_b = _train(*lazy, workers=workers)
        for pa, pb in zip(net_a.parameters(), net_b.parameters(), strict=True):
            assert torch.equal(pa, pb), workers
        assert res_a.normalizer == res_b.normalizer
        assert [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in res_a.history] == [
            {k: v for k, v in h.items() if k != "epoch_seconds"} for h in res_b.history]
