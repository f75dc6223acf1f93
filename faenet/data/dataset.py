"""A torch ``Dataset`` of records from OC20-layout LMDB files, a content hash, and the tag-0 rewiring.

``GraphDataset`` serves every task's LMDBs (embedded or real) alike: catalysis records go through
``faenet.data.oc20.convert_oc20_record`` (a no-op on project records), molecule records are project
records already; every record is checked by ``validate_record`` and the task's own fields.
"""

from __future__ import annotations

import bisect
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset
from torch_geometric.data import Data

from faenet.data.oc20 import convert_oc20_record
from faenet.data.records import TAG_SUBSURFACE, check_record_atomic_numbers, validate_record
from faenet.data.store import LmdbReader
from faenet.tasks import CATALYSIS, FORCE_TASKS, TASKS


def lmdb_files(path_or_paths: str | os.PathLike | list[str | os.PathLike]) -> list[Path]:
    """The .lmdb files named by a file, a folder (its ``*.lmdb``, sorted) or a list of either."""
    items = path_or_paths if isinstance(path_or_paths, (list, tuple)) else [path_or_paths]
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(p.glob("*.lmdb"))
            if not found:
                raise FileNotFoundError(f"folder {p} holds no *.lmdb files; generate or download the data")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p} does not exist; generate the dataset (faenet.data.catalysis."
                                    "generate_catalysis or `dvc repro fetch`) or download it "
                                    "(faenet.data.oc20)")
    return files


LAZY_RELEASE_BYTES = 16 << 20  # per LMDB file of a lazy GraphDataset: at most ~16 MiB of its map resident


class GraphDataset(Dataset):
    """Records of one task (``TASKS``) from LMDB file(s), validated against the schema.

    ``in_memory=True`` decodes and validates every record once at construction; ``False`` reads lazily
    (validating each record when it is read): only the file lengths are kept, so a split larger than memory
    can be streamed, and the dataset pickles without an open LMDB environment (each DataLoader worker opens
    its own, ``faenet.data.store.LmdbReader``). ``transform`` (e.g. :func:`remove_tag0`) is applied on access.
    Global index -> (file, local index) by bisection over cumulative lengths, as OC20 does.
    """

    def __init__(self, path_or_paths: str | os.PathLike | list[str | os.PathLike], task: str,
                 transform: Callable[[Data], Data] | None = None, in_memory: bool = True) -> None:
        if task not in TASKS:
            raise ValueError(f"task {task!r} is not one of {TASKS}")
        self.task, self.transform = task, transform
        self.files = lmdb_files(path_or_paths)
        # Lazy: each reader unmaps what it read every LAZY_RELEASE_BYTES, so a pass over a split larger than
        # memory does not leave the whole file in the resident set (``LmdbReader``).
        self.readers = [LmdbReader(f, release_bytes=None if in_memory else LAZY_RELEASE_BYTES) for f in self.files]
        self.cum = np.cumsum([len(r) for r in self.readers]).tolist()
        self.records: list[Data] | None = None
        # (lo, hi, model name): Z range a model embeds, checked per record on lazy reads (``require_atomic_numbers``).
        self.z_guard: tuple[int, int, str] | None = None
        if in_memory:
            self.records = [self._load(i) for i in range(len(self))]
            for r in self.readers:
                r.close()

    def __len__(self) -> int:
        return self.cum[-1] if self.cum else 0

    def _locate(self, idx: int) -> tuple[int, int]:
        db = bisect.bisect_right(self.cum, idx)
        return db, idx - (self.cum[db - 1] if db else 0)

    def location(self, idx: int) -> str:
        """``"<file>[<index in that file>]"`` of global record ``idx`` (what error messages name)."""
        db, local = self._locate(int(idx) % max(len(self), 1))
        return f"{self.files[db]}[{local}]"

    def require_atomic_numbers(self, lo: int, hi: int, model: str) -> None:
        """Refuse, on every later lazy read, a record with Z outside ``lo..hi`` (what ``model`` embeds)."""
        self.z_guard = (int(lo), int(hi), model)

    def _load(self, idx: int) -> Data:
        db, local = self._locate(idx)
        where = f"{self.files[db]}[{local}]"
        rec = self.readers[db][local]
        if self.task in CATALYSIS:
            try:
                rec = convert_oc20_record(rec, self.task)
            except (AttributeError, KeyError, RuntimeError, TypeError, ValueError) as err:
                # A record missing pos/cell/... or with wrong shapes fails inside the conversion: say where.
                raise ValueError(f"{where}: not a readable {self.task} record ({type(err).__name__}: {err}); "
                                 "a record needs the fields of faenet.data.records; regenerate the dataset, or "
                                 "drop this record") from err
        validate_record(rec, where)
        if self.z_guard is not None:
            check_record_atomic_numbers(rec, *self.z_guard, where=where)
        if self.task in FORCE_TASKS:
            f = getattr(rec, "force", None)
            if f is None or tuple(f.shape) != (int(rec.natoms), 3) or not torch.isfinite(f).all():
                raise ValueError(f"{where}: {self.task} record needs finite force of shape ({int(rec.natoms)}, 3)")
        if self.task == "qm9":
            t = getattr(rec, "targets", None)
            if t is None or torch.as_tensor(t).dim() != 2 or torch.as_tensor(t).shape[0] != 1:
                raise ValueError(f"{where}: qm9 record needs `targets` of shape (1, K), one column per property "
                                 "(NaN where a property is unavailable)")
        return rec

    def __getitem__(self, idx: int) -> Data:
        n = len(self)
        idx = int(idx)
        if not -n <= idx < n:
            raise IndexError(f"index {idx} out of range for a dataset of {n} records")
        idx %= n
        rec = self.records[idx] if self.records is not None else self._load(idx)
        return self.transform(rec) if self.transform is not None else rec

    def __iter__(self) -> Iterator[Data]:
        for i in range(len(self)):
            yield self[i]


# ----------------------------------------------------------------------------------------------------------
# Content hash
# ----------------------------------------------------------------------------------------------------------

def _canonical(value: Any) -> bytes:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        head = f"T{t.dtype}{tuple(t.shape)}".encode()
        arr = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()
        return head + arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
    if isinstance(value, np.ndarray):
        return f"A{value.dtype.str}{value.shape}".encode() + np.ascontiguousarray(value).tobytes()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (bool, int, float, str)) or value is None:
        return f"{type(value).__name__}:{value!r}".encode()
    if isinstance(value, (list, tuple)):
        return b"[" + b",".join(_canonical(v) for v in value) + b"]"
    raise TypeError(f"cannot hash a record field of type {type(value).__name__}")


def record_digest(data: Data) -> bytes:
    """sha256 of a record's fields (sorted by name; dtype, shape and little-endian bytes of each)."""
    h = hashlib.sha256()
    for key in sorted(data.keys()):
        h.update(key.encode() + b"=" + _canonical(data[key]) + b";")
    return h.digest()


def content_hash(path: str | os.PathLike) -> str:
    """sha256 over the records of an LMDB file or a folder of them (file names included).

    Depends only on the record values, not on the LMDB page layout or pickle details, so it is stable across
    runs, machines and writers.
    """
    h = hashlib.sha256()
    for f in lmdb_files(path):
        reader = LmdbReader(f)
        h.update(f"file:{f.name}:{len(reader)};".encode())
        for i in range(len(reader)):
            h.update(record_digest(reader[i]))
        reader.close()
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------
# Graph rewiring
# ----------------------------------------------------------------------------------------------------------

NODE_FIELDS = ("pos", "atomic_numbers", "tags", "fixed", "force", "forces", "pos_relaxed")
EDGE_FIELDS = ("cell_offsets", "distances", "edge_attr")


def remove_tag0(data: Data) -> Data:
    """Drop the sub-surface atoms (tag 0) and every edge touching them; re-index atoms and edges.

    The graph-rewiring of FAENet's OC20 runs (the paper's "removing tag-0 atoms"): per-atom fields (pos,
    atomic_numbers, tags, fixed, force, ...) keep only the kept atoms, in their original order; edges whose
    source and target are both kept are renumbered; ``natoms`` is updated. Returns a new ``Data``.
    """
    tags = data.tags
    keep = tags != TAG_SUBSURFACE
    n_old = int(tags.numel())
    if bool(keep.all()):
        return data.clone()
    new_index = torch.full((n_old,), -1, dtype=torch.long)
    new_index[keep] = torch.arange(int(keep.sum()))
    out = data.clone()
    ei = data.edge_index
    edge_keep = keep[ei[0]] & keep[ei[1]]
    out.edge_index = new_index[ei[:, edge_keep]]
    for key in data.keys():
        if key in ("edge_index",):
            continue
        value = data[key]
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            continue
        if key in EDGE_FIELDS and value.shape[0] == ei.shape[1]:
            out[key] = value[edge_keep]
        elif key in NODE_FIELDS and value.shape[0] == n_old:
            out[key] = value[keep]
    out.natoms = int(keep.sum())
    return out


# ----------------------------------------------------------------------------------------------------------
# A split against a model, before training
# ----------------------------------------------------------------------------------------------------------

def supported_atomic_numbers(model: Any) -> tuple[int, int, str] | None:
    """``(lo, hi, name)``: the Z range (inclusive) a model class or instance embeds, from its ``supported_z``
    attribute, looking through wrappers that hold it as ``.model`` (``SymmetryWrapper``); None if it has none."""
    m = model
    for _ in range(4):
        if m is None:
            break
        rng = getattr(m, "supported_z", None)
        if rng is not None:
            name = m.__name__ if isinstance(m, type) else type(m).__name__
            return int(rng[0]), int(rng[1]), name
        m = getattr(m, "model", None)
    return None


def _unwrap(dataset: Any) -> tuple[Any, list[int] | None]:
    """The innermost dataset under ``torch.utils.data.Subset`` layers and the global indices selected."""
    indices: list[int] | None = None
    while isinstance(dataset, Subset):
        sel = [int(i) for i in dataset.indices]
        indices = sel if indices is None else [sel[i] for i in indices]
        dataset = dataset.dataset
    return dataset, indices


def nested_subsets(n: int, fractions: Sequence[float], seed: int) -> dict[float, list[int]]:
    """For each fraction in (0, 1), the sorted indices of ``round(fraction * n)`` (at least 1) records of a split
    of ``n``: prefixes of one seeded permutation, so a smaller subset is inside every larger one."""
    import numpy as np

    bad = [f for f in fractions if not 0 < f < 1]
    if bad:
        raise ValueError(f"fractions must lie in (0, 1), got {bad}")
    order = np.random.default_rng(seed).permutation(n)
    return {f: sorted(int(i) for i in order[:max(1, round(f * n))]) for f in sorted(fractions)}


def is_streamed(dataset: Any) -> bool:
    """Whether ``dataset`` (or the dataset under its ``Subset`` layers) is a lazily read ``GraphDataset``: its
    records are decoded on access, never all held (the trainer then fits its normaliser in one streaming
    pass)."""
    inner, _ = _unwrap(dataset)
    return isinstance(inner, GraphDataset) and inner.records is None


def dataset_location(dataset: Any) -> str:
    """The LMDB file(s) a dataset reads (or its type), for messages."""
    inner, indices = _unwrap(dataset)
    where = (", ".join(str(f) for f in inner.files) if isinstance(inner, GraphDataset)
             else type(inner).__name__)
    return where if indices is None else f"{len(indices)} selected records of {where}"


def check_atomic_numbers(model: Any, dataset: Any, split: str) -> None:
    """Raise ``ValueError`` naming the record (file and index), the Z, the model and its range if a record of
    ``dataset`` carries an atomic number ``model`` (class or instance) does not embed.

    An in-memory ``GraphDataset`` (or a ``Subset`` of one) is scanned now (a few µs per record); a lazy one
    checks each record as it is read (``GraphDataset.require_atomic_numbers``), so no extra pass over a large
    LMDB; any other dataset is scanned through ``dataset[i]``. Models without ``supported_z`` are not checked.
    """
    rng = supported_atomic_numbers(model)
    if rng is None:
        return
    lo, hi, name = rng
    inner, indices = _unwrap(dataset)
    if isinstance(inner, GraphDataset):
        if inner.records is None:
            inner.require_atomic_numbers(lo, hi, name)
            return
        for i in (range(len(inner)) if indices is None else indices):
            check_record_atomic_numbers(inner.records[i], lo, hi, name,
                                        f"split {split!r}: {inner.location(i)}")
        return
    for i in range(len(dataset)):
        check_record_atomic_numbers(dataset[i], lo, hi, name, f"split {split!r}: record {i}")


def check_split(model: Any, dataset: Any, split: str) -> None:
    """Refuse, before any training or evaluation, an empty split or one with Z the model does not embed.

    Raises ``ValueError`` naming the split, its file(s) and the fix.
    """
    if len(dataset) == 0:
        what = "the training set is empty" if split == "train" else "the evaluation set is empty"
        raise ValueError(f"{what}: split {split!r} ({dataset_location(dataset)}) has no records; generate more "
                         "systems or molecules (params.yaml profiles.<profile>.data: n_systems / n_molecules) "
                         "or check the split fractions")
    check_atomic_numbers(model, dataset, split)
