"""Training and evaluation of any model of the project interface: energy or property targets (IS2RE, QM9)
and energy + forces (S2EF, QM7-X).

- Losses: energy MAE/MSE, force MAE/MSE on free atoms, and the energy-gradient term of Eq. (9)
  (direct forces pulled towards the detached -dE/dpos), with Table 7 coefficients.
- AdamW; cosine or reduce-on-plateau schedulers with linear warm-up; gradient clipping; target
  normalisation (mean/std of the training targets, optionally after per-element least-squares shifts;
  forces scaled by the same std, as OCP does).
- A checkpoint every epoch (model, optimiser, scheduler, RNG streams, history) written atomically and loaded
  weights-only (``faenet.checkpoint``: a corrupt one is set aside for its ``.prev``, a file carrying code is
  refused); a killed run resumes from it and reaches the same final metrics as an uninterrupted one, because the
  shuffling generator is re-seeded per epoch and evaluation runs in a forked RNG.
- A ``device`` (``faenet.device.resolve_device``): model, batches (pinned, copied non-blocking on CUDA),
  normaliser references, frames and losses live on it; only logged scalars come back to the CPU, once per
  epoch. ``amp`` (``off``/``bf16``/``fp16``, the last with a gradient scaler) autocasts the training forward
  only; evaluation stays float32.
- Data loading: in memory (``GraphDataset(in_memory=True)``, the default) or streamed from the LMDBs
  (``in_memory=False``) through ``num_workers`` DataLoader worker processes (each opens its own read-only
  LMDB environment, ``faenet.data.store``), persistent across epochs, batches in the same order as with
  ``num_workers=0``; the normaliser of a streamed training set is fitted in one pass that keeps the targets
  only (``Normalizer.fit_stream``), so no split is ever held whole in memory.
- Data parallel (``faenet.distributed``): with ``dist.world_size > 1`` the model is wrapped in DDP, each rank
  trains on its slice of the global batch with losses normalised by global counts, evaluation is sharded and
  reduced exactly, and rank 0 alone writes the checkpoint. ``dist=None`` is today's single-process path.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from torch_geometric.loader import DataLoader
from tqdm.auto import tqdm

from faenet import distributed as ddp
from faenet.checkpoint import resume_checkpoint, rng_state, save_checkpoint, set_rng_state
from faenet.data.dataset import check_split, is_streamed
from faenet.device import autocast, check_amp, grad_scaler
from faenet.metrics import EWT_THRESHOLD_EV, energy_mae, energy_within_threshold, force_mae
from faenet.warmup import prepare_model


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 10
    batch_size: int = 16
    eval_batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    scheduler: str = "cosine"  # cosine | plateau | constant
    warmup_steps: int = 0
    warmup_factor: float = 0.2
    plateau_factor: float = 0.9
    plateau_patience: int = 5
    grad_clip: float = 10.0
    loss: str = "mae"  # mae | mse
    energy_coef: float = 1.0
    force_coef: float = 0.0
    energy_grad_coef: float = 0.0
    normalize_targets: bool = True
    element_shift: bool = False
    train_on_free_atoms: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.scheduler not in ("cosine", "plateau", "constant"):
            raise ValueError(f"scheduler must be cosine, plateau or constant, got {self.scheduler!r}")
        if self.loss not in ("mae", "mse"):
            raise ValueError(f"loss must be mae or mse, got {self.loss!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Normalizer:
    """Target normalisation: the model predicts ``(y - ref - mean) / std`` and forces ``F / std``.

    ``ref`` is zero, or with ``element_shift`` the per-graph sum of per-element energies fitted by least
    squares on the training set (``y ~ sum_Z count_Z s_Z``, the authors' ``lse_shift`` for QM7-X / QM9):
    it removes the composition part of total energies (thousands of eV) before mean/std scaling.
    ``element_shift[Z]`` is in target units; Z absent from the training set get 0.
    """

    mean: float = 0.0
    std: float = 1.0
    element_shift: tuple[float, ...] | None = None

    @classmethod
    def from_state(cls, saved: Normalizer | Mapping[str, Any] | None) -> Normalizer:
        """The normaliser a checkpoint stores as ``vars(normalizer)`` (None: identity; a Normalizer: itself)."""
        if saved is None:
            return cls()
        if isinstance(saved, Normalizer):
            return saved
        shift = saved.get("element_shift")
        return cls(mean=float(saved.get("mean", 0.0)), std=float(saved.get("std", 1.0)),
                   element_shift=tuple(float(v) for v in shift) if shift is not None else None)

    @classmethod
    def fit(cls, records: Sequence[Any], enabled: bool = True, element_shift: bool = False) -> Normalizer:
        """Fit on training records (``.y`` and, for ``element_shift``, ``.atomic_numbers``)."""
        y = torch.tensor([float(r.y) for r in records], dtype=torch.float64)
        shift = None
        if element_shift and len(records):
            zmax = max(int(r.atomic_numbers.max()) for r in records)
            counts = torch.zeros(len(records), zmax + 1, dtype=torch.float64)
            for k, r in enumerate(records):
                counts[k] += torch.bincount(r.atomic_numbers.long(), minlength=zmax + 1).to(torch.float64)
            sol = torch.linalg.lstsq(counts, y[:, None], driver="gelsd").solution[:, 0]
            shift = tuple(float(v) for v in sol)
            y = y - counts @ sol
        if not enabled or y.numel() < 2:
            return cls(element_shift=shift)
        std = float(y.std())
        return cls(float(y.mean()), std if std > 1e-8 else 1.0, shift)

    @classmethod
    def fit_stream(cls, records: Callable[[], Iterable[Any]], enabled: bool = True,
                   element_shift: bool = False) -> Normalizer:
        """``fit`` without a list of the training records: ``records()`` yields them afresh on each call.

        One pass keeps only the targets, 8 bytes a record in a float64 array (34 MB for QM7-X's 4.2M
        conformers, nothing of the records), so that mean and std are computed by the very reductions ``fit``
        uses: bit-identical to ``fit`` without ``element_shift``, hence a streamed run trains the same numbers
        as an in-memory one. With ``element_shift`` the per-record element counts C cannot be kept (N x Zmax
        floats), so the pass sums the normal equations ``C^T C`` and ``C^T y`` in float64 ((Zmax+1)^2 floats),
        solved by the same minimum-norm least squares as ``fit`` (``gelsd``: Z absent from the data get 0),
        and a second pass subtracts the fitted element energies; equal to ``fit`` to float rounding (the normal
        equations square the condition number; measured on the embedded QM7-X set in ``tests/test_streaming``).
        """
        ys = array("d")
        gram: np.ndarray = np.zeros((1, 1))
        rhs: np.ndarray = np.zeros(1)
        for r in records():
            y = float(r.y)
            ys.append(y)
            if element_shift:
                c = np.bincount(r.atomic_numbers.long().numpy(), minlength=1).astype(np.float64)
                if c.size > rhs.size:  # a heavier element than seen so far: grow the sums (zeros elsewhere)
                    gram = np.pad(gram, ((0, c.size - rhs.size), (0, c.size - rhs.size)))
                    rhs = np.pad(rhs, (0, c.size - rhs.size))
                c = np.pad(c, (0, rhs.size - c.size))
                gram += np.outer(c, c)
                rhs += c * y
        y_all = torch.from_numpy(np.frombuffer(ys, dtype=np.float64).copy())
        shift = None
        if element_shift and len(ys):
            sol = torch.linalg.lstsq(torch.from_numpy(gram), torch.from_numpy(rhs)[:, None],
                                     driver="gelsd").solution[:, 0]
            shift = tuple(float(v) for v in sol)
            ref = array("d", (float(sol[r.atomic_numbers.long()].sum()) for r in records()))  # second pass
            y_all = y_all - torch.from_numpy(np.frombuffer(ref, dtype=np.float64).copy())
        if not enabled or y_all.numel() < 2:
            return cls(element_shift=shift)
        std = float(y_all.std())
        return cls(float(y_all.mean()), std if std > 1e-8 else 1.0, shift)

    def reference(self, batch: Any) -> Tensor:
        """Per-graph ``sum_i shift[Z_i]`` (B,), float64; zeros without an element shift."""
        n_graphs = int(batch.num_graphs) if getattr(batch, "num_graphs", None) is not None else 1
        z = batch.atomic_numbers.long()  # on the batch's device: no copy to the CPU inside a step
        ref = torch.zeros(n_graphs, dtype=torch.float64, device=z.device)
        if self.element_shift is None:
            return ref
        table = torch.tensor(self.element_shift, dtype=torch.float64, device=z.device)
        per_atom = torch.where(z < table.numel(), table[z.clamp(max=table.numel() - 1)], 0.0)
        b = batch.batch if getattr(batch, "batch", None) is not None else torch.zeros_like(z)
        return ref.index_add_(0, b, per_atom)

    def normalize(self, y: Tensor, batch: Any) -> Tensor:
        ref = self.reference(batch).to(device=y.device)
        return ((y.to(torch.float64) - ref - self.mean) / self.std).to(y.dtype)

    def denormalize(self, pred: Tensor, batch: Any) -> Tensor:
        ref = self.reference(batch).to(device=pred.device)
        return (pred.to(torch.float64) * self.std + self.mean + ref).to(pred.dtype)


def _epoch_loader(dataset: Dataset, batch_size: int, seed: int, epoch: int, cuda: bool) -> DataLoader:
    gen = torch.Generator().manual_seed(seed * 100003 + epoch)  # per-epoch shuffle: resumable
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=gen, pin_memory=cuda)


def _as_list(records: list[Any]) -> list[Any]:
    """Collate that keeps the records as they are (module level: picklable for spawned workers)."""
    return records


def record_stream(dataset: Dataset, num_workers: int = 0, chunk: int = 256) -> Iterator[Any]:
    """Every record of ``dataset`` once, in index order, decoded by ``num_workers`` DataLoader workers (0: here);
    nothing is kept after it is yielded (the normaliser's pass over a streamed training set)."""
    if num_workers == 0:
        for i in range(len(dataset)):
            yield dataset[i]
        return
    # torch's DataLoader, not PyG's: PyG's replaces ``collate_fn`` with its batch collater. A generator of its
    # own for the workers' base seed: drawn from the global RNG, it would shift the frame draws of training.
    loader = torch.utils.data.DataLoader(dataset, batch_size=chunk, shuffle=False, num_workers=num_workers,
                                         collate_fn=_as_list, generator=torch.Generator().manual_seed(0))
    for part in loader:
        yield from part


def atom_counts(dataset: Dataset, num_workers: int = 0) -> list[int]:
    """Atoms of every graph of ``dataset`` (after its transform, e.g. a rewiring that drops atoms), for the
    atom-balanced DDP sampler: read from the held records, or in one decoding pass of a streamed set."""
    return [int(rec.natoms) for rec in record_stream(dataset, num_workers)]


BALANCE_RANKS = ("off", "atoms")


def train_loader(dataset: Dataset, batch_size: int, seed: int, num_workers: int, dist: ddp.Dist,
                 cuda: bool, natoms: list[int] | None = None) -> tuple[DataLoader, ddp.GlobalBatchSampler]:
    """The training DataLoader of ``num_workers > 0`` workers, built once: persistent workers (each keeps its own
    LMDB environment across epochs) and a batch sampler (``set_epoch`` before each epoch) over the 1-process
    order ``epoch_order``, cut in batches as ``_epoch_loader`` cuts it; under DDP, this rank's slices.

    The loader gets a generator of its own for its workers' base seed, so it draws nothing from the global RNG
    (which the SFA frames and DA rotations use): the batches and the draws are those of ``num_workers=0``.
    """
    n = len(dataset)
    order = lru_cache(maxsize=2)(lambda epoch: epoch_order(n, seed, epoch))  # len() and iter() ask twice
    sampler = ddp.GlobalBatchSampler(n, batch_size, dist, order, natoms)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, persistent_workers=True,
                        pin_memory=cuda, generator=torch.Generator().manual_seed(seed))
    return loader, sampler


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The order in which the 1-process ``train`` visits ``range(n)`` in ``epoch``, drawn as it draws it
    (DataLoader iterators take a base seed from the generator, and iterating through tqdm, as ``train`` does,
    creates one more iterator first: a bare ``randperm`` of the generator would be another order)."""
    loader = _epoch_loader(list(range(n)), 1, seed, epoch, False)
    return [int(i) for i in tqdm(loader, disable=True)]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _elementwise(loss: str, pred: Tensor, target: Tensor) -> Tensor:
    return (pred - target).abs() if loss == "mae" else (pred - target) ** 2


def _force_mask(batch: Any, free_only: bool) -> Tensor:
    if free_only and getattr(batch, "fixed", None) is not None:
        return batch.fixed == 0
    return torch.ones(batch.num_nodes, dtype=torch.bool, device=batch.pos.device)


def _mean(x: Tensor, denom: float | None) -> Tensor:
    # ``denom`` (DDP): the global count divided by the world size, so that DDP's gradient average is the
    # gradient of the global mean (OCP's DDPLoss); None: this batch's mean, today's path exactly.
    return x.mean() if denom is None else x.sum() / denom


def compute_loss(out: Mapping[str, Tensor], batch: Any, s: TrainSettings, norm: Normalizer,
                 needs_forces: bool, denoms: tuple[float, float] | None = None
                 ) -> tuple[Tensor, dict[str, Tensor]]:
    """Total loss in normalised units and its parts (detached tensors: the caller logs them).

    ``denoms`` = (graphs, free atoms) summed over ranks / world size, under DDP; None in one process.

    Eq. (9): when the model returns ``forces_grad_target`` (FAENet ``direct_with_gradient_target``), the term
    ``energy_grad_coef * l(F_direct, -dE/dpos)`` pulls the direct force head towards the energy gradient
    (the gradient is detached, so the energy head is not changed by it).
    """
    y = norm.normalize(batch.y.to(out["energy"].dtype).view(-1), batch)
    d_graphs, d_atoms = denoms if denoms is not None else (None, None)
    loss_e = _mean(_elementwise(s.loss, out["energy"].view(-1), y), d_graphs)
    total = s.energy_coef * loss_e
    parts = {"loss_energy": loss_e.detach()}
    if needs_forces:
        mask = _force_mask(batch, s.train_on_free_atoms)
        f_target = batch.force.to(out["forces"].dtype) / norm.std
        loss_f = _mean(_elementwise(s.loss, out["forces"][mask], f_target[mask]).sum(-1), d_atoms)
        total = total + s.force_coef * loss_f
        parts["loss_force"] = loss_f.detach()
        if s.energy_grad_coef > 0 and "forces_grad_target" in out:
            loss_eg = _mean(_elementwise(s.loss, out["forces"][mask], out["forces_grad_target"][mask]).sum(-1),
                            d_atoms)
            total = total + s.energy_grad_coef * loss_eg
            parts["loss_energy_grad"] = loss_eg.detach()
    parts["loss"] = total.detach()
    return total, parts


def lr_factor(step: int, s: TrainSettings, total_steps: int) -> float:
    """Linear warm-up from ``warmup_factor`` to 1, then cosine decay to 0 (``cosine``) or flat."""
    if s.warmup_steps > 0 and step < s.warmup_steps:
        alpha = step / s.warmup_steps
        return s.warmup_factor * (1 - alpha) + alpha
    if s.scheduler == "cosine":
        span = max(1, total_steps - s.warmup_steps)
        progress = min(1.0, (step - s.warmup_steps) / span)
        return 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, batch_size: int, norm: Normalizer, needs_forces: bool,
            seed: int = 12345, device: torch.device | None = None, num_workers: int = 0) -> dict[str, Tensor]:
    """De-normalised predictions (eV, eV/Å) for a whole dataset, in a forked RNG (SFA draws frames), on
    ``device`` (default: the CPU; the model must be there already). The tensors stay on the device.

    ``num_workers`` DataLoader workers read the batches (not persistent: an evaluation is one pass; the loader
    draws its base seed from the forked RNG whatever the count, so the frame draws do not depend on it)."""
    device = device or torch.device("cpu")
    was_training = model.training
    model.eval()
    energies, forces, y, f_true, free = [], [], [], [], []
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else []):
        torch.manual_seed(seed)
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, pin_memory=cuda,
                                num_workers=num_workers):
            batch = batch.to(device, non_blocking=cuda)
            with torch.enable_grad() if needs_forces else torch.no_grad():
                out = model(batch)
            energies.append(norm.denormalize(out["energy"].detach().view(-1), batch))
            y.append(batch.y.view(-1).to(energies[-1].dtype))
            if needs_forces:
                forces.append(out["forces"].detach() * norm.std)
                f_true.append(batch.force.to(forces[-1].dtype))
                free.append(_force_mask(batch, True))
    model.train(was_training)
    res = {"energy": torch.cat(energies), "y": torch.cat(y)}
    if needs_forces:
        res.update(forces=torch.cat(forces), force=torch.cat(f_true), free=torch.cat(free))
    return res


def mae_metrics(pred: Mapping[str, Tensor], zero_reference: bool = False) -> dict[str, float]:
    """Energy MAE, EwT and, when present, force MAE over free atoms (``faenet.metrics``) of ``predict``'s
    output. ``zero_reference``: also ``zero_force_mae``, the force MAE of predicting F = 0 on the same atoms
    (mean |F| component), the floor a force head must beat to have learned anything."""
    out = {"energy_mae": energy_mae(pred["energy"], pred["y"]),
           "energy_ewt": energy_within_threshold(pred["energy"], pred["y"])}
    if "forces" in pred:
        out["force_mae"] = force_mae(pred["forces"], pred["force"], pred["free"])
        if zero_reference:
            out["zero_force_mae"] = force_mae(torch.zeros_like(pred["force"]), pred["force"], pred["free"])
    return out


def _error_sums(pred: Mapping[str, Tensor]) -> list[float]:
    """Float64 sums behind ``mae_metrics``: |dE|, EwT hits, graphs, then |dF| and free-atom components."""
    err = (pred["energy"].double() - pred["y"].double()).abs()
    out = [float(err.sum()), float((err < EWT_THRESHOLD_EV).sum()), float(err.numel())]
    if "forces" in pred:
        m = pred["free"]
        ferr = (pred["forces"][m].double() - pred["force"][m].double()).abs()
        out += [float(ferr.sum()), float(ferr.numel()), float(pred["force"][m].double().abs().sum())]
    return out


def sharded_metrics(model: nn.Module, dataset: Dataset, batch_size: int, norm: Normalizer, needs_forces: bool,
                    dist: ddp.Dist, device: torch.device, seed: int = 12345, num_workers: int = 0,
                    zero_reference: bool = False) -> dict[str, float]:
    """``mae_metrics`` under DDP: rank r predicts samples ``r::W`` (each once, no padding) and the error sums
    are reduced over ranks in float64. Every rank gets the metrics."""
    local = torch.utils.data.Subset(dataset, ddp.shard(len(dataset), dist))
    sums = _error_sums(predict(model, local, batch_size, norm, needs_forces, seed, device, num_workers)) if len(
        local) else (
        [0.0] * (6 if needs_forces else 3))
    total = ddp.reduce_sums(sums, dist, device)
    out = {"energy_mae": total[0] / total[2], "energy_ewt": total[1] / total[2]}
    if needs_forces:
        out["force_mae"] = total[3] / max(total[4], 1.0)
        if zero_reference:
            out["zero_force_mae"] = total[5] / max(total[4], 1.0)
    return out


def evaluate(model: nn.Module, dataset: Dataset, batch_size: int, norm: Normalizer, needs_forces: bool,
             seed: int = 12345, split: str = "eval", device: torch.device | None = None,
             dist: ddp.Dist | None = None, num_workers: int = 0, zero_reference: bool = False) -> dict[str, float]:
    """``mae_metrics`` of ``model`` on ``dataset`` (named ``split`` in errors); an empty split or one with
    atomic numbers the model does not embed is refused first (``faenet.data.dataset.check_split``). Under DDP
    (``dist`` with several ranks), sharded and reduced (``sharded_metrics``): call it on every rank.
    ``num_workers``: DataLoader workers reading the split (``predict``). ``zero_reference``: ``mae_metrics``'."""
    check_split(model, dataset, split)
    if dist is not None and dist.enabled:
        return sharded_metrics(model, dataset, batch_size, norm, needs_forces, dist, device or torch.device("cpu"),
                               seed, num_workers, zero_reference)
    return mae_metrics(predict(model, dataset, batch_size, norm, needs_forces, seed, device, num_workers),
                       zero_reference)


@dataclass
class TrainResult:
    history: list[dict[str, float]]
    normalizer: Normalizer
    final_val: dict[str, dict[str, float]]
    train_seconds: float
    resumed_from_epoch: int
    epoch_seconds: list[float]


def train(
    model: nn.Module,
    train_set: Dataset,
    val_sets: Mapping[str, Dataset],
    settings: TrainSettings,
    needs_forces: bool,
    checkpoint_path: Path | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
    stop_after_epoch: int | None = None,
    device: torch.device | None = None,
    amp: str = "off",
    dist: ddp.Dist | None = None,
    on_step: Callable[[int, int], None] | None = None,
    num_workers: int = 0,
    balance_ranks: str = "off",
) -> TrainResult:
    """Train ``model`` (already wrapped by its symmetry method) and evaluate on each split every epoch.

    ``val_sets`` maps split names to datasets; the first one drives the plateau scheduler.
    With ``checkpoint_path``, an existing compatible checkpoint is resumed and a new one is written after
    every epoch. A fresh (not resumed) run first calls the model's optional ``prepare`` hook (``prepare_model``).
    ``stop_after_epoch`` simulates a kill (tests); ``on_step(epoch, step)`` is called after each
    optimiser step (tests kill a rank there).

    ``device`` (default CPU) and ``amp`` (module docstring). ``dist``: this rank under DDP (the process group
    initialised, ``faenet.distributed.init``); the model is wrapped here, ``settings.batch_size`` is the
    per-rank batch, and only rank 0 writes ``checkpoint_path`` (every rank resumes from it) and calls
    ``on_epoch``.

    ``num_workers`` (> 0): DataLoader worker processes read the training and evaluation batches
    (``train_loader``, ``predict``); same batches, same numbers as 0. A streamed training set
    (``GraphDataset(in_memory=False)``, or a ``Subset`` of one) gets its normaliser from ``Normalizer.fit_stream``.

    ``balance_ranks="atoms"`` (DDP only): each global batch is split among ranks by atom count
    (``faenet.distributed.partition_by_atoms``) instead of in contiguous slices; the same union batch, so the
    same step. The SFA/DA draws are per rank, so with those methods the numbers differ from the unbalanced run's
    (as they differ between world sizes).
    """
    check_split(model, train_set, "train")  # before anything is fitted: empty splits, Z the model lacks
    for name, val_set in val_sets.items():
        check_split(model, val_set, name)
    s = settings
    device = device or torch.device("cpu")
    dist = dist or ddp.Dist()
    check_amp(amp, device)
    cuda = device.type == "cuda"
    _seed_everything(s.seed)
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if balance_ranks not in BALANCE_RANKS:
        raise ValueError(f"balance_ranks must be one of {BALANCE_RANKS}, got {balance_ranks!r}")
    natoms = atom_counts(train_set, num_workers) if dist.enabled and balance_ranks == "atoms" else None
    if is_streamed(train_set):  # no list of every record: one pass of running sums, decoded by the workers
        norm = Normalizer.fit_stream(lambda: record_stream(train_set, num_workers), s.normalize_targets,
                                     s.element_shift)
    else:  # in memory: today's fit, bit for bit (the records are held anyway)
        norm = Normalizer.fit([train_set[i] for i in range(len(train_set))], s.normalize_targets,
                              s.element_shift)
    model.to(device)
    net: nn.Module = model
    if dist.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if cuda else None)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    scaler = grad_scaler(amp, device)
    worker_loader: DataLoader | None = None
    if num_workers > 0:  # one loader for the whole run: its workers persist across epochs
        worker_loader, sampler = train_loader(train_set, s.batch_size, s.seed, num_workers, dist, cuda, natoms)
    else:
        sampler = (ddp.GlobalBatchSampler(len(train_set), s.batch_size, dist,
                                          lambda epoch: epoch_order(len(train_set), s.seed, epoch), natoms)
                   if dist.enabled else None)
    steps_per_epoch = len(sampler) if sampler is not None else math.ceil(len(train_set) / s.batch_size)
    total_steps = steps_per_epoch * s.epochs
    plateau = (torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=s.plateau_factor,
                                                          patience=s.plateau_patience)
               if s.scheduler == "plateau" else None)
    history: list[dict[str, float]] = []
    epoch_seconds: list[float] = []
    start_epoch, step = 0, 0
    resumed = resume_checkpoint(checkpoint_path) if checkpoint_path is not None else None
    if resumed is not None:
        ckpt, source = resumed
        if not isinstance(ckpt, dict) or ckpt.get("settings_digest") != s.digest():
            raise ValueError(f"checkpoint {source} was written with other training settings (or is not a training "
                             "checkpoint); delete it (or its folder) to start afresh")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("amp") is not None:
            scaler.load_state_dict(ckpt["amp"])
        if plateau is not None and ckpt.get("plateau") is not None:
            plateau.load_state_dict(ckpt["plateau"])
        saved = dict(ckpt["normalizer"])
        if saved.get("element_shift") is not None:
            saved["element_shift"] = tuple(saved["element_shift"])
        norm = Normalizer(**saved)
        history, epoch_seconds = ckpt["history"], ckpt["epoch_seconds"]
        start_epoch, step = ckpt["epoch"], ckpt["step"]
        set_rng_state(ckpt["rng"])  # one process; under DDP each epoch re-seeds every rank (below)
    else:
        # A fresh run only (a checkpoint holds what it fitted); every rank fits on the same batches alike.
        prepare_model(model, train_set, s.batch_size, device=device)
    resumed_from = start_epoch
    val_names = list(val_sets)
    t_start = time.perf_counter()
    for epoch in range(start_epoch, s.epochs):
        t0 = time.perf_counter()
        model.train()
        if dist.enabled:
            # One stream per (seed, rank, epoch) for frame draws / DA rotations: reproducible for a fixed world
            # size, and a resumed run (every rank restarts at an epoch) draws what an uninterrupted one drew.
            torch.manual_seed(ddp.rank_seed(s.seed, dist.rank, epoch))
        if worker_loader is not None:
            sampler.set_epoch(epoch)
            loader = worker_loader
            if dist.enabled:
                # The num_workers=0 DDP loader below draws its base seed from the global RNG every epoch (this
                # one has its own generator): draw the same int64, so the frame draws are those of 0 workers.
                torch.empty((), dtype=torch.int64).random_()
        elif sampler is not None:
            sampler.set_epoch(epoch)  # the same global permutation on every rank
            loader = DataLoader(train_set, batch_sampler=sampler, pin_memory=cuda)
        else:
            loader = _epoch_loader(train_set, s.batch_size, s.seed, epoch, cuda)
        sums: dict[str, Tensor] = {}
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{s.epochs}", disable=not progress or not dist.is_main,
                   leave=False)
        for batch in bar:
            batch = batch.to(device, non_blocking=cuda)
            for g in opt.param_groups:
                g["lr"] = s.lr * lr_factor(step, s, total_steps) * (
                    1.0 if plateau is None else g.get("_plateau_scale", 1.0))
            denoms = None
            if dist.enabled:  # global counts of this step (one small all_reduce): DDPLoss normalisation
                n_free = int(_force_mask(batch, s.train_on_free_atoms).sum()) if needs_forces else 0
                counts = ddp.reduce_sums([float(batch.num_graphs), float(n_free)], dist, device)
                denoms = (counts[0] / dist.world_size, max(counts[1], 1.0) / dist.world_size)
            with autocast(amp, device):
                out = net(batch)
            if amp != "off":  # the loss in float32: autocast outputs may be half precision
                out = {k: v.float() for k, v in out.items()}
            loss, parts = compute_loss(out, batch, s, norm, needs_forces, denoms)
            if not dist.enabled and not torch.isfinite(loss):  # under DDP: checked on the reduced epoch sums
                raise FloatingPointError(f"loss is {float(loss)} at epoch {epoch + 1}, step {step}: lower lr or "
                                         "check the data for NaN; the last good checkpoint is kept")
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)  # clip the true gradients
            else:
                loss.backward()
            if s.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            step += 1
            for k, v in parts.items():  # float64 sums on the device: no host sync per step
                sums[k] = sums.get(k, 0.0) + v.double()
            if progress and dist.is_main and not cuda:
                bar.set_postfix(loss=f"{float(parts['loss']):.4f}")
            if on_step is not None:
                on_step(epoch, step)
        keys = sorted(sums)
        means = ddp.reduce_sums([float(sums[k]) for k in keys], dist, device) if dist.enabled else (
            [float(sums[k]) for k in keys])
        # Under DDP each rank's part is its share of W x the global loss (``denoms``); x / 1 is exact.
        row: dict[str, float] = {f"train_{k}": v / steps_per_epoch / dist.world_size
                                 for k, v in zip(keys, means, strict=True)}
        if dist.enabled and not all(math.isfinite(v) for v in row.values()):
            raise FloatingPointError(f"rank {dist.rank}: non-finite training loss in epoch {epoch + 1}: lower lr or "
                                     "check the data for NaN; the last good checkpoint is kept")
        for name in val_names:
            # predict, not evaluate: the split was checked once above, not every epoch.
            if dist.enabled:
                metrics = sharded_metrics(model, val_sets[name], s.batch_size * 4, norm, needs_forces, dist,
                                          device, num_workers=num_workers)
            else:
                metrics = mae_metrics(predict(model, val_sets[name], s.batch_size * 4, norm, needs_forces,
                                              device=device, num_workers=num_workers))
            for k, v in metrics.items():
                row[f"{name}_{k}"] = v
        row["lr"] = opt.param_groups[0]["lr"]
        if plateau is not None and val_names:
            before = opt.param_groups[0]["lr"]
            plateau.step(row[f"{val_names[0]}_energy_mae"])
            scale = opt.param_groups[0]["lr"] / max(before, 1e-30)
            for g in opt.param_groups:  # keep the plateau decay across warm-up resets of lr
                g["_plateau_scale"] = g.get("_plateau_scale", 1.0) * scale
        epoch_seconds.append(time.perf_counter() - t0)
        row["epoch_seconds"] = epoch_seconds[-1]
        history.append(row)
        if checkpoint_path is not None and dist.is_main:
            save_checkpoint({"model": model.state_dict(), "optimizer": opt.state_dict(),
                          "amp": scaler.state_dict() if scaler is not None else None,
                          "plateau": plateau.state_dict() if plateau is not None else None,
                          "normalizer": asdict(norm), "history": history, "epoch_seconds": epoch_seconds,
                          "epoch": epoch + 1, "step": step, "rng": rng_state(),
                          "settings_digest": s.digest()}, checkpoint_path)
        ddp.barrier(dist)  # no rank runs ahead of the checkpoint it would resume from
        if on_epoch is not None and dist.is_main:
            on_epoch(epoch, row)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < s.epochs:
            raise KeyboardInterrupt(f"stopped after epoch {epoch + 1} (simulated kill)")
    final = {name: {k[len(name) + 1:]: v for k, v in history[-1].items() if k.startswith(name + "_")}
             for name in val_names} if history else {}
    return TrainResult(history, norm, final, time.perf_counter() - t_start, resumed_from, epoch_seconds)
