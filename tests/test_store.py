"""faenet.data.store: OC20-layout LMDB round trip, deterministic pickling, the restricted unpickler, errors;
faenet.data.dataset: GraphDataset validation and content_hash."""

import collections
import io
import os
import pickle

import lmdb
import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from faenet.data import store
from faenet.data.dataset import GraphDataset, content_hash
from faenet.data.records import validate_record
from faenet.data.store import LmdbReader, StoreError, UnsafePickleError, dumps, loads, write_lmdb


def _record(seed: int, n: int = 5) -> Data:
    g = torch.Generator().manual_seed(seed)
    e = 2 * n
    return Data(pos=torch.rand(n, 3, generator=g) * 4, atomic_numbers=torch.randint(1, 80, (n,), generator=g),
                natoms=n, tags=torch.tensor([0, 1, 1, 2, 2][:n]), fixed=torch.tensor([1, 0, 0, 0, 0][:n]),
                cell=torch.eye(3).reshape(1, 3, 3) * 6, pbc=torch.tensor([[True, True, False]]),
                edge_index=torch.randint(0, n, (2, e), generator=g),
                cell_offsets=torch.zeros(e, 3, dtype=torch.long),
                y=float(seed) - 0.5, sid=seed)


def _put_raw(path, values: dict) -> None:
    env = lmdb.open(str(path), map_size=1 << 24, subdir=False, meminit=False, map_async=True)
    with env.begin(write=True) as txn:
        for k, v in values.items():
            txn.put(k, v)
    env.close()


def test_round_trip_layout_and_values(tmp_path):
    recs = [_record(i) for i in range(12)]
    path = tmp_path / "set.lmdb"
    assert write_lmdb(path, recs) == 12
    assert not list(tmp_path.glob("*.tmp-*"))  # the temporary file was renamed
    env = lmdb.open(str(path), subdir=False, readonly=True, lock=False)
    with env.begin() as txn:
        keys = sorted(k for k, _ in txn.cursor())
        assert pickle.loads(txn.get(b"length")) == 12
    env.close()
    assert keys == sorted([str(i).encode() for i in range(12)] + [b"length"])  # OC20 keys "0".."11"
    reader = LmdbReader(path)
    assert len(reader) == 12
    for i in (0, 10, -1):
        got, want = reader[i], recs[i]
        assert set(got.keys()) == set(want.keys())
        for k in want.keys():
            assert torch.equal(torch.as_tensor(got[k]), torch.as_tensor(want[k])), k
        validate_record(got)
    # Plain pickle (what OC20 readers use) reads our bytes too.
    assert torch.equal(pickle.loads(reader.raw(3)).pos, recs[3].pos)
    with pytest.raises(IndexError, match="out of range"):
        reader[12]


def test_dumps_is_deterministic_and_stable_under_reload():
    rec = _record(3)
    rec.pos = torch.rand(5, 6)[:, ::2]  # a non-contiguous view must not leak its storage layout
    b = dumps(rec)
    assert dumps(rec) == b
    assert dumps(loads(b)) == b
    assert b"9462" not in b  # no memory-address storage keys (torch's default pickling embeds them)


def test_write_is_byte_identical_for_same_records(tmp_path):
    write_lmdb(tmp_path / "a.lmdb", [_record(i) for i in range(5)])
    write_lmdb(tmp_path / "b.lmdb", [_record(i) for i in range(5)])
    assert (tmp_path / "a.lmdb").read_bytes() == (tmp_path / "b.lmdb").read_bytes()
    assert content_hash(tmp_path / "a.lmdb") == content_hash(tmp_path / "a.lmdb")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _StorageBlob:
    def __init__(self, b):
        self.b = b

    def __reduce__(self):
        return (torch.storage._load_from_bytes, (self.b,))


def test_malicious_pickle_refused_without_executing(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Evil(marker), protocol=-1)
    # Nested inside an otherwise valid record, as an attacker would ship it.
    inner = _record(0)
    inner.extra = _Evil(marker)
    path = tmp_path / "evil.lmdb"
    _put_raw(path, {b"0": payload, b"1": pickle.dumps(inner, protocol=-1), b"length": pickle.dumps(2)})
    reader = LmdbReader(path)
    for i in (0, 1):
        with pytest.raises(UnsafePickleError) as err:
            reader[i]
        msg = str(err.value)
        assert "system" in msg and str(path) in msg and f"key '{i}'" in msg
    assert not marker.exists()
    # A tensor storage blob whose header smuggles a callable is refused too.
    blob = b"".join(pickle.dumps(x, protocol=2) for x in (store._LEGACY_MAGIC, 1001, {"little_endian": True}))
    blob += pickle.dumps(_Evil(marker), protocol=2)
    with pytest.raises(UnsafePickleError, match="system"):
        loads(pickle.dumps(_StorageBlob(blob), protocol=-1))
    assert not marker.exists()
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        loads(pickle.dumps(eval, protocol=-1))
    with pytest.raises(UnsafePickleError, match="object dtype"):
        loads(pickle.dumps(np.array([None, 1], dtype=object)))


def test_every_tensor_dtype_and_layout_reads_back_exactly():
    g = torch.Generator().manual_seed(0)
    fields = {str(dt).split(".")[1]: (torch.rand(7, generator=g) * 100).to(dt)
              for dt in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64,
                         torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)}
    fields.update(view=torch.rand(4, 6, generator=g)[:, 1::2], empty=torch.zeros(0, 3),
                  scalar=torch.tensor(2.5))
    rec = Data(**fields)
    for raw in (pickle.dumps(rec, protocol=-1), dumps(rec)):  # torch's own pickling, and ours
        back = loads(raw)
        for k, v in fields.items():
            assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    # Storage bytes in another layout (a zip-format torch.save) go through torch.load(weights_only=True).
    buf = io.BytesIO()
    torch.save(torch.arange(3.0)._typed_storage(), buf)
    storage = store._load_storage_from_bytes(buf.getvalue())
    assert not isinstance(storage, store._FlatStorage)
    rebuilt = store._rebuild_tensor(storage, 1, (2,), (1,), False, collections.OrderedDict())
    assert rebuilt.tolist() == [1.0, 2.0]


def test_numpy_scalars_and_arrays_are_admitted():
    obj = Data(y=np.float64(1.25), a=np.arange(4, dtype=np.float32), n=np.int64(3), pos=torch.zeros(2, 3))
    back = loads(pickle.dumps(obj, protocol=-1))
    assert back.y == 1.25 and back.n == 3 and np.array_equal(back.a, np.arange(4, dtype=np.float32))


def test_missing_corrupt_and_non_record_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.lmdb.*generate_catalysis"):
        LmdbReader(tmp_path / "nope.lmdb")
    bad = tmp_path / "bad.lmdb"
    bad.write_bytes(b"this is not an lmdb file" * 200)
    with pytest.raises(StoreError, match="bad.lmdb.*corrupt"):
        len(LmdbReader(bad))
    path = tmp_path / "odd.lmdb"
    _put_raw(path, {b"0": pickle.dumps({"a": 1}), b"1": b"\x80\x05garbage", b"length": pickle.dumps(3)})
    reader = LmdbReader(path)
    with pytest.raises(StoreError, match="holds a dict"):
        reader[0]
    with pytest.raises(StoreError, match="key '1'.*cannot decode"):
        reader[1]
    with pytest.raises(StoreError, match="key '2' is missing"):
        reader[2]


def test_reader_is_picklable_for_dataloader_workers(tmp_path):
    write_lmdb(tmp_path / "a.lmdb", [_record(i) for i in range(3)])
    reader = LmdbReader(tmp_path / "a.lmdb")
    _ = reader[0]  # opens the environment
    clone = pickle.loads(pickle.dumps(reader))
    assert torch.equal(clone[2].pos, reader[2].pos)


def test_graph_dataset_folder_and_validation(tmp_path):
    write_lmdb(tmp_path / "d" / "a.lmdb", [_record(i) for i in range(3)])
    write_lmdb(tmp_path / "d" / "b.lmdb", [_record(i) for i in range(3, 5)])
    ds = GraphDataset(tmp_path / "d", task="is2re")
    assert len(ds) == 5 and [int(ds[i].sid) for i in range(5)] == [0, 1, 2, 3, 4]
    lazy = GraphDataset(tmp_path / "d", task="is2re", in_memory=False, transform=lambda d: d.clone())
    assert torch.equal(lazy[4].pos, ds[4].pos)
    with pytest.raises(ValueError, match="task 'oc22'"):
        GraphDataset(tmp_path / "d", task="oc22")
    with pytest.raises(ValueError, match="targets"):  # QM9 records carry one column per property
        GraphDataset(tmp_path / "d", task="qm9")
    with pytest.raises(ValueError, match="force"):  # IS2RE records have no forces
        GraphDataset(tmp_path / "d", task="s2ef")
    # Degenerate and NaN records are rejected on load, naming the file and the field.
    nan = _record(9)
    nan.pos[2, 1] = float("nan")
    write_lmdb(tmp_path / "nan.lmdb", [_record(0), nan])
    with pytest.raises(ValueError, match=r"nan.lmdb\[1\].*pos contains NaN"):
        GraphDataset(tmp_path / "nan.lmdb", task="is2re")
    bad_y = _record(1)
    bad_y.y = float("inf")
    short = _record(2)
    short.cell_offsets = short.cell_offsets[:-1]
    for name, rec, msg in (("y.lmdb", bad_y, "target y"), ("off.lmdb", short, "cell_offsets")):
        write_lmdb(tmp_path / name, [rec])
        with pytest.raises(ValueError, match=msg):
            GraphDataset(tmp_path / name, task="is2re")
    with pytest.raises(FileNotFoundError, match="generate_catalysis"):
        GraphDataset(tmp_path / "missing.lmdb", task="is2re")


def test_content_hash_depends_on_values_only(tmp_path):
    recs = [_record(i) for i in range(4)]
    write_lmdb(tmp_path / "x" / "train.lmdb", recs, commit_every=1)  # other page layout, same values
    write_lmdb(tmp_path / "y" / "train.lmdb", recs)
    assert content_hash(tmp_path / "x") == content_hash(tmp_path / "y")
    recs[2].y += 1e-6
    write_lmdb(tmp_path / "z" / "train.lmdb", recs)
    assert content_hash(tmp_path / "z") != content_hash(tmp_path / "y")
