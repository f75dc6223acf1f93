"""LMDB storage in the OC20 layout, with a restricted unpickler and deterministic pickling.

Layout (as OC20's writers, ocp ``scripts/preprocess_ef.py``): one LMDB *file* (``subdir=False``), keys
``b"0" .. b"N-1"`` (decimal ASCII, no padding) holding ``pickle.dumps(Data, protocol=-1)``, plus
``b"length"`` = ``pickle.dumps(N)``. Released IS2RE files have no ``length`` key; the reader then uses the
entry count.

Reading never runs arbitrary pickles: :class:`RestrictedUnpickler` admits only the globals an OC20/PyG record
needs (torch tensor rebuild, PyG ``Data``/``GlobalStorage``, numpy scalars/arrays of non-object dtype) and
refuses anything else (``os.system``, ``builtins.eval``, ...) before it is called. Tensor storages are loaded
with ``torch.load(..., weights_only=True)``.

Writing uses :func:`dumps`, which emits exactly the byte format torch's own pickling does
(``_rebuild_tensor_v2(_load_from_bytes(legacy torch.save bytes), ...)``) but with a fixed storage key
instead of a memory address, so the same records give the same LMDB bytes in every run.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import torch
from torch_geometric.data import Data
from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
from torch_geometric.data.storage import GlobalStorage

LENGTH_KEY = b"length"
# OC20 writers ask for 2 TiB; LMDB only reserves address space, the file grows with the data.
DEFAULT_MAP_SIZE = 1 << 40


class UnsafePickleError(pickle.UnpicklingError):
    """A record asked for a global outside the allow-list (the pickle may be malicious)."""


class StoreError(ValueError):
    """An LMDB file is missing, corrupt, or holds something that is not a record."""


# ----------------------------------------------------------------------------------------------------------
# Restricted unpickling
# ----------------------------------------------------------------------------------------------------------

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch's legacy (non-zip) serialisation magic number
_STORAGE_DTYPES = {"FloatStorage": torch.float32, "DoubleStorage": torch.float64,
                   "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
                   "LongStorage": torch.int64, "IntStorage": torch.int32, "ShortStorage": torch.int16,
                   "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool}


class _NotFastPath(Exception):
    """The storage bytes are not the simple one-storage legacy layout: use torch.load instead."""


class _StorageType:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _FlatStorage:
    """A storage read by the fast path: a flat tensor over the raw bytes."""

    __slots__ = ("flat",)

    def __init__(self, flat: torch.Tensor) -> None:
        self.flat = flat


class _LegacyHeaderUnpickler(pickle.Unpickler):
    """Reads the small header pickles of a legacy storage file; admits only storage type names."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise UnsafePickleError(f"tensor storage header refers to '{module}.{name}', "
                                "which is not a storage type")

    def persistent_load(self, pid: Any) -> Any:
        # ("storage", storage_type, key, location, numel, view_metadata), as torch's legacy writer emits
        if (isinstance(pid, tuple) and len(pid) == 6 and pid[0] in ("storage", b"storage")
                and isinstance(pid[1], _StorageType) and isinstance(pid[4], int) and pid[5] is None):
            return ("storage", pid[1].dtype, pid[2], pid[4])
        raise _NotFastPath


def _read_legacy_storage(b: bytes) -> _FlatStorage:
    f = io.BytesIO(b)

    def load() -> Any:
        return _LegacyHeaderUnpickler(f).load()

    if load() != _LEGACY_MAGIC or load() != 1001:
        raise _NotFastPath
    info = load()
    if not isinstance(info, dict) or info.get("little_endian") is not True:
        raise _NotFastPath
    obj, keys = load(), load()
    if not (isinstance(obj, tuple) and keys == [obj[2]]):
        raise _NotFastPath
    _, dtype, _, numel = obj
    head = f.read(8)
    if len(head) != 8 or struct.unpack("<q", head)[0] != numel:
        raise _NotFastPath
    size = numel * torch.empty((), dtype=dtype).element_size()
    raw = f.read(size)
    if len(raw) != size or f.read(1):
        raise _NotFastPath
    flat = torch.frombuffer(bytearray(raw), dtype=dtype) if numel else torch.empty(0, dtype=dtype)
    return _FlatStorage(flat)


def _load_storage_from_bytes(b: bytes) -> Any:
    """Safe stand-in for ``torch.storage._load_from_bytes`` (that one uses ``weights_only=False``).

    The one-storage legacy layout every OC20/PyG record uses is parsed directly (much faster than
    ``torch.load``, whose weights-only unpickler is pure Python); anything else goes to
    ``torch.load(..., weights_only=True)``.
    """
    try:
        return _read_legacy_storage(b)
    except UnsafePickleError:
        raise
    except (_NotFastPath, pickle.UnpicklingError, EOFError, ValueError, TypeError, struct.error):
        return torch.load(io.BytesIO(b), weights_only=True)


def _rebuild_tensor(storage: Any, storage_offset: int, size: tuple, stride: tuple, requires_grad: bool,
                    backward_hooks: Any, metadata: Any = None) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2`` that also accepts the fast path's flat storages."""
    if not isinstance(storage, _FlatStorage):
        return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
                                               backward_hooks, metadata)
    t = storage.flat.as_strided(tuple(size), tuple(stride), int(storage_offset))
    if metadata:
        torch._utils.set_tensor_metadata(t, metadata)
    return t.requires_grad_(bool(requires_grad)) if t.is_floating_point() else t


def _safe_dtype(*args: Any, **kwargs: Any) -> np.dtype:
    """``numpy.dtype`` that refuses object dtypes (they would let a pickle smuggle arbitrary objects)."""
    dt = np.dtype(*args, **kwargs)
    if dt.hasobject:
        raise UnsafePickleError(f"numpy object dtype {dt!r} is not allowed in a record")
    return dt


def _numpy_globals() -> dict[tuple[str, str], Any]:
    core = np._core if hasattr(np, "_core") else np.core  # numpy 2 / numpy 1
    out: dict[tuple[str, str], Any] = {("numpy", "dtype"): _safe_dtype, ("numpy", "ndarray"): np.ndarray}
    # Both spellings: files written under numpy 1.x say numpy.core, under 2.x numpy._core.
    for mod in ("numpy.core", "numpy._core"):
        out[(f"{mod}.multiarray", "scalar")] = core.multiarray.scalar
        out[(f"{mod}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
        out[(f"{mod}.numeric", "_frombuffer")] = core.numeric._frombuffer
    for name in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool_"):
        out[("numpy", name)] = getattr(np, name)
    return out


_TORCH_DTYPES = {name for name in dir(torch) if isinstance(getattr(torch, name, None), torch.dtype)}
_TORCH_STORAGES = {"FloatStorage", "DoubleStorage", "HalfStorage", "LongStorage", "IntStorage",
                   "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage", "BFloat16Storage"}

ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("torch", "Size"): torch.Size,
    ("torch_geometric.data.data", "Data"): Data,
    ("torch_geometric.data.data", "DataEdgeAttr"): DataEdgeAttr,
    ("torch_geometric.data.data", "DataTensorAttr"): DataTensorAttr,
    ("torch_geometric.data.storage", "GlobalStorage"): GlobalStorage,
    **_numpy_globals(),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only :data:`ALLOWED_GLOBALS` (plus torch dtypes/storage types).

    ``where`` (e.g. ``"file.lmdb, key '12'"``) is put in the error message of a refused global.
    """

    def __init__(self, file: io.BytesIO, where: str = "pickle") -> None:
        super().__init__(file)
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        hit = ALLOWED_GLOBALS.get((module, name))
        if hit is not None:
            return hit
        if module == "torch" and (name in _TORCH_DTYPES or name in _TORCH_STORAGES):
            return getattr(torch, name)
        raise UnsafePickleError(
            f"{self.where}: refusing to unpickle global '{module}.{name}': it is not one of the types an "
            "OC20/PyG record is made of (the record may be malicious). Regenerate the file with "
            "faenet.data.store.write_lmdb, or load it with plain pickle only if you trust its origin.")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.where}: persistent id {pid!r} is not allowed in a record")


def loads(b: bytes, where: str = "pickle") -> Any:
    """Unpickle ``b`` with :class:`RestrictedUnpickler`; old PyG-1.x ``Data`` objects are upgraded."""
    obj = RestrictedUnpickler(io.BytesIO(b), where).load()
    return _upgrade(obj)


def _upgrade(obj: Any) -> Any:
    if isinstance(obj, Data):
        return upgrade_data(obj)
    if isinstance(obj, dict):
        return {k: _upgrade(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_upgrade(v) for v in obj]
    return obj


def upgrade_data(data: Data) -> Data:
    """Turn a PyG-1.x-layout ``Data`` (attributes straight in ``__dict__``, no ``_store``) into a proper one.

    PyG-1.x ``__init__`` stored unset attributes as ``None`` (``x``, ``edge_attr``, ``normal``, ``face``...),
    which are dropped, as fairchem's ``pyg2_data_transform`` does; ``__num_nodes__`` becomes ``num_nodes``.
    """
    d = data.__dict__
    if "_store" in d:
        return data
    fields = {}
    for k, v in d.items():
        if v is None:
            continue
        if k == "__num_nodes__":
            fields["num_nodes"] = v
        elif not k.startswith("_"):
            fields[k] = v
    return Data(**fields)


# ----------------------------------------------------------------------------------------------------------
# Deterministic pickling
# ----------------------------------------------------------------------------------------------------------

class _StorageBytes:
    """Stands for ``torch.storage._load_from_bytes(b)`` in a pickle stream."""

    __slots__ = ("b",)

    def __init__(self, b: bytes) -> None:
        self.b = b


def _legacy_storage_bytes(t: torch.Tensor) -> bytes:
    """Legacy (non-zip) ``torch.save`` of ``t``'s storage with the key ``"0"`` instead of a memory address."""
    storage = t._typed_storage()
    buf = io.BytesIO()
    torch.save(storage, buf, _use_new_zipfile_serialization=False)
    raw = buf.getvalue()
    key = str(storage._cdata).encode()
    # The five header pickles come first, then int64 numel + raw bytes: rewrite the key only in the header.
    nbytes = t.numel() * t.element_size()
    head, tail = raw[: len(raw) - 8 - nbytes], raw[len(raw) - 8 - nbytes:]
    old = b"X" + struct.pack("<I", len(key)) + key
    if head.count(old) != 2:  # the persistent id and the key list
        return raw
    return head.replace(old, b"X" + struct.pack("<I", 1) + b"0") + tail


class _DeterministicPickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is torch.Tensor and obj.layout == torch.strided and obj.device.type == "cpu":
            t = obj.detach().contiguous().clone()  # fresh storage: offset 0, exactly numel elements
            return (torch._utils._rebuild_tensor_v2,
                    (_StorageBytes(_legacy_storage_bytes(t)), 0, tuple(t.size()), t.stride(),
                     obj.requires_grad, collections.OrderedDict()))
        if isinstance(obj, _StorageBytes):
            return (torch.storage._load_from_bytes, (obj.b,))
        return NotImplemented


def dumps(obj: Any) -> bytes:
    """``pickle.dumps(obj, protocol=-1)`` whose bytes depend only on the values (readable by OC20 readers)."""
    buf = io.BytesIO()
    _DeterministicPickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------------
# LMDB files
# ----------------------------------------------------------------------------------------------------------

def write_lmdb(path: str | os.PathLike, records: Iterable[Data], *, commit_every: int = 10_000,
               map_size: int = DEFAULT_MAP_SIZE) -> int:
    """Write ``records`` to ``path`` in the OC20 layout; returns the number written.

    Atomic: written to ``<path>.tmp-<pid>`` and renamed, so a killed writer never leaves a half file under
    the final name. Same records -> same file bytes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    for p in (tmp, Path(f"{tmp}-lock")):
        p.unlink(missing_ok=True)
    env = lmdb.open(str(tmp), map_size=map_size, subdir=False, meminit=True, lock=False, sync=False)
    n = 0
    try:
        txn = env.begin(write=True)
        for rec in records:
            txn.put(str(n).encode("ascii"), dumps(rec))
            n += 1
            if n % commit_every == 0:
                txn.commit()
                txn = env.begin(write=True)
        txn.put(LENGTH_KEY, pickle.dumps(n, protocol=-1))
        txn.commit()
        env.sync(True)
    except BaseException:
        env.close()
        tmp.unlink(missing_ok=True)
        raise
    env.close()
    os.replace(tmp, path)
    return n


# py-lmdb refuses to open one file twice in a process, so readers of the same file share one environment,
# reference-counted. Environments belong to the process that opened them (LMDB: "do not use an environment
# after fork()"): a forked child (a DataLoader worker) inherits the parent's table and py-lmdb's registry, so
# the first acquire in a new process closes its inherited copies (the parent's own stay open) and opens its
# own; a spawned child starts with an empty table. Keys carry the pid for that reason.
_ENVS: dict[tuple, list] = {}
_ENVS_PID = os.getpid()


def _drop_inherited_envs() -> None:
    global _ENVS_PID
    pid = os.getpid()
    if _ENVS_PID == pid:
        return
    for env, _ in _ENVS.values():
        try:
            env.close()  # this process's mapping only: the parent's environment is unaffected
        except lmdb.Error:
            pass
    _ENVS.clear()
    _ENVS_PID = pid


def _acquire_env(path: Path) -> tuple[lmdb.Environment, tuple]:
    _drop_inherited_envs()
    st = path.stat()
    key = (os.getpid(), str(path.resolve()), st.st_ino, st.st_mtime_ns, st.st_size)
    entry = _ENVS.get(key)
    if entry is None:
        try:
            env = lmdb.open(str(path), subdir=False, readonly=True, lock=False, readahead=False,
                            meminit=False, max_readers=1)
        except lmdb.Error as err:
            raise StoreError(f"{path} is not a readable LMDB file ({err}); it is corrupt or truncated "
                             "(or was replaced while open): delete it and regenerate or re-download it"
                             ) from err
        entry = _ENVS[key] = [env, 0]
    entry[1] += 1
    return entry[0], key


def _release_env(key: tuple) -> None:
    entry = _ENVS.get(key) if key[0] == os.getpid() else None  # a key inherited through fork: not ours
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] <= 0:
        entry[0].close()
        del _ENVS[key]


class LmdbReader:
    """Lazy random access to one OC20-layout LMDB file: ``len(r)``, ``r[i]`` -> ``Data``.

    The environment opens read-only with ``lock=False`` on first use in each process: a reader sent to (spawn,
    pickled without its environment) or inherited by (fork) a DataLoader worker opens its own there
    (``env_pid`` says which process opened the one in use).

    ``release_bytes``: after reading that many bytes, the reader closes its environment (reopened on the next
    read, some 50 µs). The pages of the memory map a read touched stay in this process's resident set until the
    map is closed: a pass over a 100 GB split would show 100 GB of RSS (reclaimable page cache, but counted by
    ``ru_maxrss`` and by batch schedulers). Closing bounds that to about ``release_bytes``; the kernel keeps
    the pages cached, so the next reads do not go to disk. None (the default): keep the map open.
    """

    def __init__(self, path: str | os.PathLike, release_bytes: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            hint = " (it is a folder: pass the .lmdb file inside it)" if self.path.is_dir() else ""
            raise FileNotFoundError(
                f"LMDB file {self.path} not found{hint}. Generate it (faenet.data.catalysis."
                "generate_catalysis, or `dvc repro fetch`) or download it (faenet.data.oc20).")
        self._env: lmdb.Environment | None = None
        self._key: tuple | None = None
        self._len: int | None = None
        self.env_pid: int | None = None
        self.release_bytes = release_bytes
        self._bytes_read = 0

    def _open(self) -> lmdb.Environment:
        if self._env is None or self.env_pid != os.getpid():  # none yet, or the parent's (inherited by fork)
            self._env, self._key = _acquire_env(self.path)
            self.env_pid = os.getpid()
        return self._env

    def __len__(self) -> int:
        if self._len is None:
            env = self._open()
            with env.begin() as txn:
                raw = txn.get(LENGTH_KEY)
                if raw is not None:
                    n = loads(raw, f"{self.path}, key 'length'")
                    if not isinstance(n, int) or n < 0:
                        raise StoreError(f"{self.path}: key 'length' holds {n!r}, expected an int >= 0")
                else:  # released OC20 IS2RE files have no length key
                    n = env.stat()["entries"]
            self._len = int(n)
        return self._len

    def raw(self, idx: int) -> bytes:
        """The stored bytes of record ``idx``."""
        idx = int(idx)
        n = len(self)
        if not -n <= idx < n:
            raise IndexError(f"index {idx} out of range for {self.path} with {n} records")
        idx %= n
        with self._open().begin() as txn:
            b = txn.get(str(idx).encode("ascii"))  # a copy (buffers=False): nothing points into the map after
        if self.release_bytes is not None and b is not None:
            self._bytes_read += len(b)
            if self._bytes_read >= self.release_bytes:
                self.close()  # unmaps the touched pages (docstring); the next read reopens
        if b is None:
            raise StoreError(f"{self.path}: key '{idx}' is missing although the file holds {n} records; "
                             "the file is corrupt: regenerate or re-download it")
        return b

    def __getitem__(self, idx: int) -> Data:
        where = f"{self.path}, key '{idx}'"
        try:
            obj = loads(self.raw(idx), where)
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, RuntimeError) as err:
            if isinstance(err, (StoreError, IndexError)):
                raise
            raise StoreError(f"{where}: cannot decode the record ({err}); the file is corrupt or not an "
                             "OC20-layout LMDB: regenerate or re-download it") from err
        if not isinstance(obj, Data):
            raise StoreError(f"{where}: holds a {type(obj).__name__}, expected a torch_geometric Data record")
        return obj

    def __iter__(self) -> Iterator[Data]:
        for i in range(len(self)):
            yield self[i]

    def close(self) -> None:
        if self._env is not None:
            _release_env(self._key)
            self._env, self._key, self.env_pid = None, None, None
        self._bytes_read = 0

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_env": None, "_key": None, "_len": self._len, "env_pid": None,
                "release_bytes": self.release_bytes, "_bytes_read": 0}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"LmdbReader({str(self.path)!r})"
