"""Data-parallel training with PyTorch DDP: the process group from torchrun's or SLURM's environment, the
global-batch sampler, loss normalisation across ranks and exact sharded evaluation. Library code: no DVC,
no MLflow (the pipeline logs on rank 0 only, ``Dist.is_main``).

Choices (and why):

- **One global shuffle.** Every rank draws the 1-process run's permutation of the epoch (``set_epoch``) and
  takes its contiguous slice of each *global* batch of ``batch_size * world`` graphs. With losses normalised
  by global counts (the trainer's ``denoms``) and DDP averaging gradients, a step on W
  ranks is the 1-process step on the union batch (to float reassociation), for any world size. A
  ``DistributedSampler`` draws its own permutation (``seed + epoch``) and pads with duplicates, so it could not
  be compared to the 1-process run. Global batch = per-rank batch x world size.
- **Evaluation once per sample.** Rank r evaluates indices ``r::W`` (no padding) and the sums of absolute
  errors, hits and counts are ``all_reduce``d in float64 (``reduce_sums``).
- **Randomness per rank.** Under DDP each rank seeds its global RNG (SFA frame draws, DA rotations) from
  ``(seed, rank, epoch)`` at each epoch: reproducible for a fixed world size, and a resumed run draws what an
  uninterrupted one drew. World size 1 does not come here (today's path).
- **Backends.** nccl on CUDA, gloo on CPU; ``torch.cuda.set_device`` before ``init_process_group`` (OCP PR
  #342: no stray context on GPU 0).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from faenet.device import resolve_device


@dataclass(frozen=True)
class Dist:
    """This process's place in the job; ``Dist()`` is the single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_rank() -> Dist:
    """Rank, world size and local rank from torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) or, under a bare
    ``srun`` (no torchrun), SLURM (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``); ``Dist()`` if neither."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return Dist(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return Dist(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
    return Dist()


def launched() -> bool:
    """Whether this process was started by torchrun or srun as one of several ranks."""
    return env_rank().enabled


def init(device_spec: str = "auto", init_method: str | None = None, dist: Dist | None = None,
         timeout_s: float = 1800.0) -> tuple[Dist, torch.device]:
    """Join the process group (if several ranks) and return ``(dist, device)``.

    Under SLURM without torchrun, ``MASTER_ADDR`` must be exported by the job script (the first host of
    ``scontrol show hostnames``) and ``MASTER_PORT`` defaults to 29500.
    """
    d = dist or env_rank()
    device = resolve_device(device_spec, d.local_rank if d.enabled else None)
    if not d.enabled:
        return d, device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if init_method is None:
        os.environ.setdefault("MASTER_PORT", "29500")
        if "MASTER_ADDR" not in os.environ:
            raise RuntimeError(f"rank {d.rank}/{d.world_size}: MASTER_ADDR is not set; launch with torchrun, or "
                               "export MASTER_ADDR (first host of the SLURM job) before srun")
        init_method = "env://"
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=init_method,
                                 rank=d.rank, world_size=d.world_size,
                                 timeout=datetime.timedelta(seconds=timeout_s))
    return d, device


def shutdown() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def barrier(dist: Dist) -> None:
    if dist.enabled:
        tdist.barrier()


def rank_seed(seed: int, rank: int, epoch: int) -> int:
    """The seed of rank ``rank``'s global RNG in ``epoch`` under DDP: one stream per (seed, rank, epoch)."""
    return (seed * 1_000_003 + rank * 7919 + epoch * 104_729) % 2**63


def partition_by_atoms(batch: Sequence[int], natoms: Sequence[int], world: int) -> list[list[int]]:
    """Split one global batch among ``world`` ranks so their atom totals are balanced: longest-processing-time
    greedy (graphs by atoms descending, ties by position in ``batch``; each to the rank with the fewest atoms so
    far, ties to the lowest rank). Deterministic and the same on every rank; each rank's indices keep their order
    in ``batch``. ``natoms[i]``: the atoms of graph ``i`` (>= 1, so every rank gets a graph when
    ``len(batch) >= world``)."""
    import heapq

    if world < 1:
        raise ValueError(f"world must be >= 1, got {world}")
    sizes = [int(natoms[i]) for i in batch]
    if any(a < 1 for a in sizes):
        raise ValueError(f"every graph needs >= 1 atom to be balanced; got atom counts {min(sizes)} in a batch")
    heap = [(0, r) for r in range(world)]  # (atoms so far, rank): the heap's minimum is the rank to fill
    owner = [0] * len(batch)
    for pos in sorted(range(len(batch)), key=lambda p: -sizes[p]):  # stable: ties keep batch order
        total, r = heapq.heappop(heap)
        owner[pos] = r
        heapq.heappush(heap, (total + sizes[pos], r))
    return [[i for i, o in zip(batch, owner, strict=True) if o == r] for r in range(world)]


class GlobalBatchSampler:
    """Batches of indices for one rank: the slice ``rank`` of each global batch of ``batch_size * world``
    indices of one permutation shared by all ranks (module docstring). ``set_epoch`` before each epoch.

    A global batch of ``m`` indices gives ranks ``m // W`` or ``m // W + 1`` of them; a last batch with fewer
    indices than ranks is dropped (a rank with no graph cannot take part in the gradient all-reduce).

    With ``natoms`` (atoms per graph), each global batch is instead split by ``partition_by_atoms``, so ranks get
    balanced atom totals (OCP's balanced batch sampler idea: the step waits for the slowest rank, whose cost
    grows with its atoms). The union batch is unchanged, and so is the step: each rank's loss is its sum over
    the global count times W (``denoms``) and DDP averages gradients over ranks, so the gradient is that of
    (sum over all ranks) / global count whatever the per-rank graph counts.
    """

    def __init__(self, n: int, batch_size: int, dist: Dist, order: Callable[[int], list[int]],
                 natoms: Sequence[int] | None = None) -> None:
        """``order(epoch)``: the permutation of ``range(n)`` of an epoch, the same on every rank (the trainer
        passes its 1-process order, ``faenet.training.epoch_order``)."""
        if natoms is not None and len(natoms) != n:
            raise ValueError(f"natoms has {len(natoms)} entries for a dataset of {n} graphs")
        self.n, self.batch_size, self.dist, self.order, self.natoms = n, batch_size, dist, order, natoms
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batches(self) -> list[list[int]]:
        perm = self.order(self.epoch)
        size = self.batch_size * self.dist.world_size
        batches = [perm[i:i + size] for i in range(0, self.n, size)]
        return [b for b in batches if len(b) >= self.dist.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        w, r = self.dist.world_size, self.dist.rank
        for b in self.global_batches():
            if self.natoms is not None:
                yield partition_by_atoms(b, self.natoms, w)[r]
                continue
            q, extra = divmod(len(b), w)
            start = r * q + min(r, extra)
            yield b[start:start + q + (1 if r < extra else 0)]

    def __len__(self) -> int:
        return len(self.global_batches())


def global_count(n: int | float, dist: Dist, device: torch.device) -> float:
    """``n`` summed over ranks (``n`` itself in one process)."""
    if not dist.enabled:
        return float(n)
    t = torch.tensor(float(n), dtype=torch.float64, device=device)
    tdist.all_reduce(t)
    return float(t)


def shard(n: int, dist: Dist) -> list[int]:
    """The evaluation indices of this rank: ``rank::world`` (every sample once, no padding)."""
    return list(range(dist.rank, n, dist.world_size))


def reduce_sums(values: Sequence[float], dist: Dist, device: torch.device) -> list[float]:
    """Element-wise sums over ranks of float64 partial sums."""
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    if dist.enabled:
        tdist.all_reduce(t)
    return t.tolist()


def torchrun_command(nproc: int, module: str, args: Sequence[str]) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node N -m module args``: one node, a free
    rendezvous port (c10d on localhost:0, so that several jobs can share a host)."""
    import sys

    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "--rdzv-backend=c10d", "--rdzv-endpoint=localhost:0", "-m", module, *args]


def relaunch(nproc: int, module: str, args: Sequence[str]) -> int:
    """Run ``module`` on ``nproc`` local ranks under torchrun and wait; on a failure, say which rank failed (the
    torchrun summary above names its exit code or signal) and that a rerun resumes from the last checkpoint."""
    import subprocess
    import sys

    rc = subprocess.call(torchrun_command(nproc, module, args))
    if rc != 0:
        print(f"{module}: a DDP rank of {nproc} failed (torchrun exit code {rc}; the 'Root Cause' in torchrun's "
              "summary above names the rank and its exit code or signal, e.g. -9 for SIGKILL). The other ranks "
              "were stopped; rerun to resume every rank from the last checkpoint.", file=sys.stderr, flush=True)
    return rc


def spawn(fn, args: tuple, nprocs: int) -> None:
    """``torch.multiprocessing.spawn(fn, args, nprocs)`` (``fn(rank, *args)`` in each process), with a clear
    error when a rank dies: which rank, how (signal or exit code), and that a rerun resumes from the last
    checkpoint. The other ranks are stopped by ``spawn`` itself."""
    import torch.multiprocessing as mp

    try:
        mp.spawn(fn, args=args, nprocs=nprocs, join=True)
    except mp.ProcessExitedException as err:
        how = f"signal {err.signal_name}" if err.signal_name else f"exit code {err.exit_code}"
        raise RuntimeError(f"DDP rank {err.error_index} of {nprocs} died ({how}); the other ranks were stopped. "
                           "Rerun to resume every rank from the last checkpoint.") from err
    except mp.ProcessRaisedException as err:
        raise RuntimeError(f"DDP rank {err.error_index} of {nprocs} failed:\n{err}") from err
