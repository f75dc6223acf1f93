"""Peak memory of one FAENet training epoch against the size of the training LMDB, streamed (``train.stream``:
``GraphDataset(in_memory=False)``) and in memory, and what limits an epoch: the data pipeline or the model.

1. A fixture LMDB of ``--records`` slabs like the embedded catalysis set (fcc(111) slab of 2 x 2 x 3 atoms, tags
   0/1/2, an adsorbate of 1-3 atoms, the radius graph of ``faenet.data.catalysis``: 6 Å, 30 neighbours),
   written by the project's writer (``faenet.data.store.write_lmdb``), then its 4x and 16x copies (the records
   repeated, written record by record: nothing held whole).
2. For each size, a fresh subprocess trains FAENet (the default profile's IS2RE hyperparameters, SFA) one epoch
   with streaming on (``--child``); its peak RSS is ``ru_maxrss`` from ``os.wait4`` of that child. The child
   also samples its own ``RssAnon`` (the part that is not file pages) for the peak anonymous memory. Then the
   same at 16x in memory, for the difference.
3. Throughputs in samples/s: the data pipeline alone (LMDB read + decode + validation + collate, the training
   sampler, ``--workers`` worker counts) and the model alone (forward + backward + optimiser step on batches
   already collated), so the smaller one says which limits an epoch.

    python -m benchmarks.streaming_memory [--records 400] [--sizes 1 4 16] [--workers 0 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
HPARAMS = {"hidden_channels": 48, "num_filters": 32, "num_interactions": 2, "num_gaussians": 16,
           "tag_hidden_channels": 8, "pg_hidden_channels": 8, "cutoff": 6.0, "regress_forces": ""}  # params.yaml
BATCH_SIZE = 16
ADSORBATES = (("O",), ("O", "H"), ("C", "O"), ("N", "H", "H"))


def synthetic_slabs(n: int, seed: int = 0) -> Iterator:
    """``n`` IS2RE records shaped like the embedded catalysis set (``faenet.data.catalysis._record``), without
    the EMT relaxations: jittered fcc(111) Cu/Pd/Au slabs with an adsorbate; the target a smooth function of the
    composition and adsorbate height (the benchmark measures memory and speed, not accuracy)."""
    from ase.build import add_adsorbate, fcc111

    from faenet.data.catalysis import PhysicsParams, _record

    p = PhysicsParams(seed=seed, slab_size=(2, 2, 3), fmax=0.05, max_steps=0, cutoff=6.0, max_num_neighbors=30,
                      s2ef_frame_stride=1)
    rng = np.random.default_rng(seed)
    for k in range(n):
        metal = ("Cu", "Pd", "Au")[k % 3]
        slab = fcc111(metal, size=(2, 2, 3), vacuum=10.0)
        layer = np.round(slab.positions[:, 2], 3)
        top = layer >= layer.max() - 1e-3
        ads = ADSORBATES[k % len(ADSORBATES)]
        height = 1.6 + 0.4 * rng.random()
        add_adsorbate(slab, ads[0], height, "fcc")
        for j, sym in enumerate(ads[1:]):
            add_adsorbate(slab, sym, height + 1.1 * (j + 1), "fcc")
        pos = slab.positions + rng.normal(0.0, 0.05, slab.positions.shape)
        z = slab.numbers
        tags = np.concatenate([np.where(top, 1, 0), np.full(len(ads), 2)])
        fixed = np.concatenate([(layer <= layer.min() + 1e-3).astype(int), np.zeros(len(ads), dtype=int)])
        y = -0.5 * len(ads) + 0.3 * (metal == "Au") - 0.2 * height + 0.05 * rng.normal()
        yield _record(pos, z, tags, fixed, np.asarray(slab.cell), y, p, sid=k)


def write_fixture(folder: Path, n: int, sizes: list[int]) -> dict[int, Path]:
    """``x<k>.lmdb`` for each size k: the ``n`` base records repeated k times, each written as it is read."""
    from faenet.data.store import LmdbReader, write_lmdb

    base = folder / "x1.lmdb"
    write_lmdb(base, synthetic_slabs(n))
    reader = LmdbReader(base)
    out = {1: base}
    for k in sizes:
        if k != 1:
            out[k] = folder / f"x{k}.lmdb"
            write_lmdb(out[k], (reader[i] for _ in range(k) for i in range(n)))
    reader.close()
    return out


class _AnonPeak:
    """Samples this process's ``RssAnon`` (/proc/self/status) every 10 ms: the peak of anonymous memory, which
    ``ru_maxrss`` mixes with file pages (the LMDB map)."""

    def __init__(self) -> None:
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> int:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, self._read())
            self._stop.wait(0.01)

    def __enter__(self) -> _AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, self._read())


def _model():
    from baselines import build_model
    from faenet.symmetry import SymmetryWrapper

    torch.manual_seed(0)
    return SymmetryWrapper(build_model("faenet", **HPARAMS), "sfa", frame_dim=2)


def child(path: Path, mode: str, workers: int) -> None:
    """One epoch of training on ``path`` (the subprocess of ``main``); prints one JSON line."""
    from faenet.data.dataset import GraphDataset
    from faenet.training import TrainSettings, train

    with _AnonPeak() as anon:
        t0 = time.perf_counter()
        ds = GraphDataset(path, task="is2re", in_memory=mode == "memory")
        load_s = time.perf_counter() - t0
        res = train(_model(), ds, {}, TrainSettings(epochs=1, batch_size=BATCH_SIZE, lr=1e-3, seed=0), False,
                    progress=False, num_workers=workers)
    print(json.dumps({"n": len(ds), "load_s": load_s, "epoch_s": res.epoch_seconds[0],
                      "samples_per_s": len(ds) / res.epoch_seconds[0], "anon_peak_kb": anon.peak_kb}), flush=True)


def run_child(path: Path, mode: str, workers: int, threads: int) -> dict:
    """``child`` in a fresh interpreter; adds its ``ru_maxrss`` (KiB, Linux) from ``os.wait4``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "benchmarks.streaming_memory", "--child", str(path), "--mode", mode,
           "--child-workers", str(workers), "--threads", str(threads)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    return {**json.loads(out.strip().splitlines()[-1]), "maxrss_kb": usage.ru_maxrss}


def loader_throughput(path: Path, workers: int, epochs: int = 1) -> float:
    """Samples/s of the training loader alone (LMDB read + decode + validation + collate), streamed."""
    from faenet import distributed as ddp
    from faenet.data.dataset import GraphDataset
    from faenet.training import _epoch_loader, train_loader

    ds = GraphDataset(path, task="is2re", in_memory=False)
    loader, sampler = (train_loader(ds, BATCH_SIZE, 0, workers, ddp.Dist(), False) if workers
                       else (None, None))
    if loader is not None:  # start the workers before the clock: a run pays it once, not every epoch
        sampler.set_epoch(0)
        next(iter(loader))
    n, t0 = 0, time.perf_counter()
    for epoch in range(epochs):
        if loader is None:
            it = _epoch_loader(ds, BATCH_SIZE, 0, epoch, False)
        else:
            sampler.set_epoch(epoch)
            it = loader
        for batch in it:
            n += int(batch.num_graphs)
    return n / (time.perf_counter() - t0)


def model_throughput(path: Path, n_batches: int = 12) -> float:
    """Samples/s of training steps alone (forward + loss + backward + AdamW step) on batches already collated."""
    from torch_geometric.data import Batch

    from faenet.data.dataset import GraphDataset

    ds = GraphDataset(path, task="is2re")
    batches = [Batch.from_data_list([ds[(i * BATCH_SIZE + j) % len(ds)] for j in range(BATCH_SIZE)])
               for i in range(n_batches)]
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(b) -> None:
        loss = (model(b)["energy"].view(-1) - b.y.float()).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(batches[0])  # warm-up
    t0 = time.perf_counter()
    for b in batches:
        step(b)
    return n_batches * BATCH_SIZE / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=400, help="records of the 1x fixture")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16], help="copies of the fixture")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 4], help="loader worker counts to time")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the training processes")
    ap.add_argument("--dir", type=Path, default=None, help="where the fixture goes (default: a temp dir)")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=["stream", "memory"], default="stream", help=argparse.SUPPRESS)
    ap.add_argument("--child-workers", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child is not None:
        child(args.child, args.mode, args.child_workers)
        return 0
    sizes = sorted(set(args.sizes) | {1})
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        t0 = time.perf_counter()
        paths = write_fixture(Path(tmp), args.records, sizes)
        mib = {k: p.stat().st_size / 2**20 for k, p in paths.items()}
        print(f"fixture: {args.records} slabs x {sizes} -> " + ", ".join(f"{k}x {mib[k]:.1f} MiB" for k in sizes)
              + f" (written in {time.perf_counter() - t0:.0f} s)", flush=True)
        rows = {}
        for k in sizes:
            rows[("stream", k)] = run_child(paths[k], "stream", 0, args.threads)
        big = max(sizes)
        rows[("memory", big)] = run_child(paths[big], "memory", 0, args.threads)
        print("\none training epoch of FAENet (SFA, batch 16), a fresh process each; peak RSS = ru_maxrss (MiB), "
              "anon = peak RssAnon (MiB)")
        print(f"{'mode':<8}{'size':>6}{'records':>9}{'peak RSS':>10}{'anon':>8}{'epoch s':>9}{'samples/s':>11}")
        for (mode, k), r in rows.items():
            print(f"{mode:<8}{k:>5}x{r['n']:>9}{r['maxrss_kb'] / 1024:>10.0f}{r['anon_peak_kb'] / 1024:>8.0f}"
                  f"{r['epoch_s']:>9.1f}{r['samples_per_s']:>11.0f}")
        s1, sb, mb = rows[("stream", 1)], rows[("stream", big)], rows[("memory", big)]
        print(f"\nstreamed peak RSS {big}x / 1x: {sb['maxrss_kb'] / s1['maxrss_kb']:.3f} (goal <= 1.25); "
              f"anonymous {sb['anon_peak_kb'] / s1['anon_peak_kb']:.3f}")
        print(f"in memory at {big}x: peak RSS {mb['maxrss_kb'] / 1024:.0f} MiB = "
              f"{mb['maxrss_kb'] / sb['maxrss_kb']:.2f} x streamed")
        probe = paths[4 if 4 in paths else big]
        print(f"\nthroughput (samples/s, {probe.name}, batch {BATCH_SIZE}):")
        for w in args.workers:
            print(f"  data pipeline, {w} workers (LMDB read + decode + collate): {loader_throughput(probe, w):.0f}")
        print(f"  model, training steps on collated batches ({args.threads} thread): "
              f"{model_throughput(paths[1]):.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
