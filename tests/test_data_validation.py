"""Records refused at the door (faenet.data.records.validate_record through GraphDataset), splits checked
against a model's supported atomic numbers and for emptiness before training (faenet.data.dataset.check_split,
faenet.training.train / evaluate). Every error must name the record (file and index) or the split, and the fix."""

import re

import pytest
import torch
from torch import nn
from torch.utils.data import Subset
from torch_geometric.data import Data

from baselines.dimenet_pp import DimeNetPP
from baselines.forcenet import ForceNet
from baselines.registry import available_models, get_model_class
from baselines.schnet import SchNet
from faenet.data.dataset import GraphDataset, check_atomic_numbers, check_split, supported_atomic_numbers
from faenet.data.records import validate_record
from faenet.data.store import write_lmdb
from faenet.model import FAENet
from faenet.symmetry import SymmetryWrapper
from faenet.training import Normalizer, TrainSettings, evaluate, train

DOOR_FIX = "regenerate the dataset, or drop this record"


def slab(seed: int = 0, n: int = 5, z: list[int] | None = None) -> Data:
    """A small valid slab-like record: pbc in x and y, a full cell."""
    g = torch.Generator().manual_seed(seed)
    e = 2 * n
    return Data(pos=torch.rand(n, 3, generator=g) * 4,
                atomic_numbers=torch.tensor(z if z is not None else [29, 29, 29, 8, 1][:n]),
                natoms=n, tags=torch.tensor([0, 1, 1, 2, 2][:n]), fixed=torch.tensor([1, 0, 0, 0, 0][:n]),
                cell=torch.diag(torch.tensor([6.0, 6.0, 25.0])).reshape(1, 3, 3),
                pbc=torch.tensor([[True, True, False]]), edge_index=torch.randint(0, n, (2, e), generator=g),
                cell_offsets=torch.zeros(e, 3, dtype=torch.long), y=float(seed), sid=seed)


def molecule(seed: int = 0, n: int = 4) -> Data:
    """A valid molecule record: all-zero cell, no pbc, tags -1, forces (QM7-X)."""
    g = torch.Generator().manual_seed(seed)
    ei = torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]])
    return Data(pos=torch.rand(n, 3, generator=g), atomic_numbers=torch.tensor([6, 1, 8, 1][:n]), natoms=n,
                tags=torch.full((n,), -1), fixed=torch.zeros(n, dtype=torch.long), cell=torch.zeros(1, 3, 3),
                pbc=torch.zeros(1, 3, dtype=torch.bool), edge_index=ei,
                cell_offsets=torch.zeros(6, 3, dtype=torch.long), y=-1.0 - seed, force=torch.zeros(n, 3))


def _set(**fields):
    def apply(r: Data) -> Data:
        for k, v in fields.items():
            setattr(r, k, v(r) if callable(v) else v)
        return r
    return apply


def _drop(name: str):
    def apply(r: Data) -> Data:
        del r[name]
        return r
    return apply


def _nan_at(name: str, value: float = float("nan")):
    def apply(r: Data) -> Data:
        t = r[name].clone()
        t.view(-1)[1] = value
        r[name] = t
        return r
    return apply


# (mutation of a valid slab, task, words the message must hold besides the record's path and index).
# Task "qm7x" reads records as they are; "is2re" converts them first (faenet.data.oc20.convert_oc20_record).
BAD_RECORDS = {
    "nan_pos": (_nan_at("pos"), "is2re", "pos contains NaN or inf"),
    "inf_pos": (_nan_at("pos", float("inf")), "is2re", "pos contains NaN or inf"),
    "nan_cell": (_nan_at("cell"), "is2re", "cell contains NaN or inf"),
    "inf_cell": (_nan_at("cell", float("-inf")), "is2re", "cell contains NaN or inf"),
    "singular_cell": (_set(cell=torch.tensor([[[6.0, 0, 0], [3.0, 0, 0], [0, 0, 25.0]]])), "is2re",
                      "singular along its periodic directions"),
    "zero_periodic_vector": (_set(cell=torch.tensor([[[6.0, 0, 0], [0, 0, 0], [0, 0, 25.0]]])), "is2re",
                             "has length 0"),
    "singular_3d_cell": (_set(cell=torch.tensor([[[6.0, 0, 0], [0, 6.0, 0], [6.0, 6.0, 0]]]),
                              pbc=torch.tensor([[True, True, True]])), "is2re", "linearly dependent"),
    "z_zero": (_set(atomic_numbers=torch.tensor([29, 0, 29, 8, 1])), "is2re", "atomic numbers [0] are not elements"),
    "z_negative": (_set(atomic_numbers=torch.tensor([29, -3, 29, 8, 1])), "is2re", "[-3] are not elements"),
    "z_not_an_element": (_set(atomic_numbers=torch.tensor([29, 29, 200, 8, 1])), "is2re", "[200] are not elements"),
    "pos_wrong_shape": (_set(pos=torch.zeros(4, 3)), "qm7x", "pos has shape (4, 3), expected (5, 3)"),
    "pos_wrong_shape_oc20_task": (_set(pos=torch.zeros(4, 3)), "is2re", "not a readable is2re record"),
    "tags_wrong_shape": (_set(tags=torch.zeros(3, dtype=torch.long)), "qm7x", "tags has shape (3,)"),
    "fixed_wrong_shape": (_set(fixed=torch.zeros(6, dtype=torch.long)), "qm7x", "fixed has shape (6,)"),
    "cell_wrong_shape": (_set(cell=torch.eye(3)), "qm7x", "cell has shape (3, 3)"),
    "pbc_not_bool": (_set(pbc=torch.ones(1, 3)), "qm7x", "expected (1, 3) bool"),
    "edge_index_out_of_range": (_set(edge_index=torch.tensor([[0, 7], [1, 0]]),
                                     cell_offsets=torch.zeros(2, 3, dtype=torch.long)), "is2re",
                                "atom indices 0..7, outside 0..4"),
    "edge_index_wrong_shape": (_set(edge_index=torch.zeros(3, 4, dtype=torch.long)), "qm7x",
                               "edge_index has shape (3, 4)"),
    "cell_offsets_wrong_shape": (_set(cell_offsets=torch.zeros(3, 3, dtype=torch.long)), "is2re",
                                 "cell_offsets has shape (3, 3), expected (10, 3)"),
    "nan_target": (_set(y=float("nan")), "is2re", "target y is NaN"),
    "missing_cell_molecule_task": (_drop("cell"), "qm7x", "missing fields ['cell']"),
    "missing_cell_oc20_task": (_drop("cell"), "is2re", "not a readable is2re record"),
    "missing_atomic_numbers": (_drop("atomic_numbers"), "qm7x", "missing fields ['atomic_numbers']"),
}


@pytest.mark.parametrize("name", list(BAD_RECORDS))
@pytest.mark.parametrize("in_memory", [True, False])
def test_bad_record_is_refused_with_its_path_index_and_fix(tmp_path, name, in_memory):
    mutate, task, words = BAD_RECORDS[name]
    recs = [slab(i) for i in range(3)]
    for r in recs:
        r.force = torch.zeros(5, 3)  # QM7-X records carry forces
    recs[2] = mutate(recs[2])
    path = tmp_path / "split.lmdb"
    write_lmdb(path, recs)
    with pytest.raises(ValueError) as err:
        ds = GraphDataset(path, task=task, in_memory=in_memory)
        for i in range(len(ds)):
            ds[i]
    msg = str(err.value)
    assert f"{path}[2]" in msg  # the file and the index inside it
    assert words in msg
    assert DOOR_FIX in msg or "give a valid lattice" in msg  # what to do about it
    if in_memory:
        return
    lazy = GraphDataset(path, task=task, in_memory=False)
    assert lazy[1].natoms == 5  # the good records before it are still served


@pytest.mark.parametrize("record", [
    molecule(0),  # zero cell, no pbc: a molecule must pass
    slab(0),
    _set(cell=torch.tensor([[[6.0, 0, 0], [3.0, 5.2, 0], [0, 0, 0]]]))(slab(1)),  # slab without a z vector
    _set(cell=torch.tensor([[[5.0, 0, 0], [2.5, 4.33, 0], [1.0, 1.0, 20.0]]]),
         pbc=torch.tensor([[True, True, True]]))(slab(2)),  # triclinic, periodic in 3-D (OC20)
    _set(cell=torch.zeros(1, 3, 3, dtype=torch.float64))(molecule(1)),  # float64 cell (expressivity pairs)
    _set(atomic_numbers=torch.tensor([118, 1, 1, 1]))(molecule(2)),  # the heaviest element: a model's call
])
def test_legitimate_records_pass(record):
    validate_record(record, "ok")


def test_every_registered_model_states_its_atomic_number_range():
    for name in available_models():
        cls = get_model_class(name)
        lo, hi = cls.supported_z
        assert 1 <= lo < hi <= 118, name
    assert supported_atomic_numbers(FAENet)[:2] == (1, 100)
    assert supported_atomic_numbers(SchNet)[:2] == (1, 99)  # PyG Embedding(100, H)
    assert supported_atomic_numbers(DimeNetPP)[:2] == (1, 94)  # PyG EmbeddingBlock Embedding(95, H)
    assert supported_atomic_numbers(ForceNet)[:2] == (1, 99)
    # The range is the embedding's: the largest supported Z runs, one more fails (here with a bare IndexError).
    net = SchNet(hidden_channels=8, num_filters=8, num_interactions=1, num_gaussians=8)
    net.embedding(torch.tensor([99]))
    with pytest.raises(IndexError):
        net.embedding(torch.tensor([100]))


@pytest.mark.parametrize("model,z", [(SchNet, 100), (DimeNetPP, 95), (FAENet, 101), (ForceNet, 100)])
def test_atomic_number_too_large_for_the_model_is_refused_before_training(tmp_path, model, z):
    path = tmp_path / "train.lmdb"
    write_lmdb(path, [slab(0), slab(1, z=[29, 29, z, 8, 1]), slab(2)])
    ds = GraphDataset(path, task="is2re")
    check_split(model, Subset(ds, [0, 2]), "train")  # the record is not selected: fine
    with pytest.raises(ValueError) as err:
        check_split(model, ds, "train")
    lo, hi = model.supported_z
    msg = str(err.value)
    assert f"split 'train': {path}[1]" in msg
    assert f"atomic numbers [{z}] are outside what {model.__name__} embeds (Z = {lo}..{hi})" in msg
    assert "drop the records with these elements, or use a model" in msg
    with pytest.raises(ValueError, match=re.escape(f"{path}[1]")):  # through a Subset, the file's own index
        check_split(model, Subset(ds, [2, 1]), "train")


def test_lazy_dataset_checks_the_model_range_on_each_read(tmp_path):
    path = tmp_path / "big.lmdb"
    write_lmdb(path, [slab(0), slab(1, z=[29, 29, 96, 8, 1])])
    lazy = GraphDataset(path, task="is2re", in_memory=False)
    check_atomic_numbers(SymmetryWrapper(nn.Identity(), "none"), lazy, "train")  # no supported_z: unchecked
    check_atomic_numbers(DimeNetPP, lazy, "val_id")  # no pass over the file now...
    lazy[0]
    with pytest.raises(ValueError, match=re.escape(f"{path}[1]: atomic numbers [96] are outside what DimeNetPP")):
        lazy[1]  # ...but on the read


class CountingModel(nn.Module):
    """Energy = w * natoms; counts forward calls (none may happen before a refused split)."""

    supported_z = (1, 30)

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.calls = 0

    def forward(self, batch):
        self.calls += 1
        return {"energy": self.w * batch.natoms.float()}


def _split(tmp_path, name, records):
    write_lmdb(tmp_path / f"{name}.lmdb", records)
    return GraphDataset(tmp_path / f"{name}.lmdb", task="is2re")


def test_empty_train_split_is_refused_with_its_path_and_the_fix(tmp_path):
    empty = _split(tmp_path, "train", [])
    with pytest.raises(ValueError) as err:
        train(CountingModel(), empty, {}, TrainSettings(epochs=1), False, progress=False)
    msg = str(err.value)
    assert "the training set is empty: split 'train'" in msg and str(tmp_path / "train.lmdb") in msg
    assert "n_systems / n_molecules" in msg


def test_empty_or_unsupported_eval_split_is_refused_before_the_first_epoch(tmp_path):
    train_set = _split(tmp_path, "train", [slab(i) for i in range(4)])
    empty = _split(tmp_path, "val_ood", [])
    model = CountingModel()
    with pytest.raises(ValueError) as err:
        train(SymmetryWrapper(model, "none"), train_set, {"val_ood": empty}, TrainSettings(epochs=1), False,
              progress=False)
    msg = str(err.value)
    assert "the evaluation set is empty: split 'val_ood'" in msg and str(tmp_path / "val_ood.lmdb") in msg
    assert "params.yaml" in msg
    heavy = _split(tmp_path, "val_id", [slab(0), slab(1, z=[29, 29, 47, 8, 1])])  # Ag: beyond 1..30
    with pytest.raises(ValueError, match=re.escape(f"split 'val_id': {tmp_path / 'val_id.lmdb'}[1]: atomic "
                                                   "numbers [47] are outside what CountingModel embeds (Z = 1..30)")):
        train(model, train_set, {"val_id": heavy}, TrainSettings(epochs=1), False, progress=False)
    assert model.calls == 0  # refused before any training step
    with pytest.raises(ValueError, match="split 'test'"):  # evaluate: not a torch.cat error on no batches
        evaluate(model, empty, 4, Normalizer(), False, split="test")
    result = train(model, train_set, {"val_id": train_set}, TrainSettings(epochs=1, batch_size=2), False,
                   progress=False)
    assert "val_id_energy_mae" in result.history[0] and model.calls > 0  # good splits still train


def test_pipeline_checks_every_eval_split_before_training(tmp_path):
    from pipeline.runs import check_splits

    sets = {"train": _split(tmp_path, "train", [slab(0)]), "val_id": _split(tmp_path, "val_id", [slab(1)]),
            "test_ood": _split(tmp_path, "test_ood", [])}
    check_splits(CountingModel(), sets, ["val_id"])
    with pytest.raises(ValueError, match="split 'test_ood'"):  # the last split, otherwise read after training
        check_splits(CountingModel(), sets, ["val_id", "test_ood"])
