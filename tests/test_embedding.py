"""faenet.embedding: the mendeleev property table (App. B.1) is complete and normalised, period/group/tag
lookups cover the whole periodic table and molecules, unknown elements fail clearly, the cache round-trips."""

import numpy as np
import pytest
import torch

from faenet.embedding import (
    MAX_ATOMIC_NUMBER,
    NORMALISATION_MAX_Z,
    PROPERTY_NAMES,
    AtomEmbedding,
    check_atomic_numbers,
    element_table,
)


def test_property_table_is_complete_and_zero_mean_over_reference_elements():
    table = element_table()
    assert table.names == PROPERTY_NAMES  # all 14 columns kept (NaN count < 42 each)
    props = table.properties
    assert props.shape == (MAX_ATOMIC_NUMBER + 1, 14)
    assert not np.isnan(props).any()
    assert np.allclose(props[0], 0.0)  # row 0: no element
    ref = props[1:NORMALISATION_MAX_Z + 1]
    assert np.allclose(ref.mean(axis=0), 0.0, atol=1e-12)
    # complete columns are exactly unit sample-std; columns with filled NaN have less spread
    stds = ref.std(axis=0, ddof=1)
    assert np.all(stds <= 1.0 + 1e-12) and np.allclose(stds[table.names.index("density")], 1.0)
    assert element_table() is table  # computed once per process


def test_property_values_follow_physics():
    table = element_table()
    ie1 = table.properties[:, table.names.index("IE1")]
    assert ie1[2] > ie1[10] > ie1[1] > ie1[3]  # He > Ne > H > Li (first ionisation energies)
    vol = table.properties[:, table.names.index("atomic_volume")]
    assert vol[55] > vol[29]  # Cs molar volume >> Cu


def test_period_and_group_cover_the_whole_table():
    table = element_table()
    assert table.period[1] == 1 and table.period[87] == 7 and table.period[100] == 7
    assert table.group[1] == 1 and table.group[18] == 18 and table.group[29] == 11
    assert table.group[58] == 19 and table.group[92] == 19  # Ce, U: f-block -> its own index
    assert table.period[1:].min() >= 1 and table.period.max() <= 7 and table.group.max() <= 19


def test_atom_embedding_runs_on_heavy_elements_and_molecule_tags():
    torch.manual_seed(0)
    emb = AtomEmbedding(64, tag_hidden_channels=8, pg_hidden_channels=6, phys_embeds=True)
    z = torch.tensor([1, 8, 29, 58, 79, 87, 92, 100])  # period 7 and f-block crash the official code
    tags = torch.tensor([-1, 0, 1, 2, -1, 0, 1, 2])
    out = emb(z, tags)
    assert out.shape == (8, 64) and torch.isfinite(out).all()
    # tag -1 has its own row, distinct from tags 0, 1, 2
    rows = emb.tag_embedding(torch.arange(4))
    assert torch.allclose(out[0, -8 - 14 - 12:-14 - 12], rows[3])
    assert not torch.allclose(rows[3], rows[0])
    # the properties enter unchanged (no phys_hidden_channels)
    assert torch.allclose(out[:, 64 - 12 - 14:64 - 12].double(), torch.tensor(element_table().properties)[z])
    with pytest.raises(ValueError, match="tags"):
        emb(z, torch.full((8,), 3))
    with pytest.raises(ValueError, match="no `tags`"):
        emb(z, None)


def test_widths_and_options():
    no_extra = AtomEmbedding(16, tag_hidden_channels=0, pg_hidden_channels=0, phys_embeds=False)
    assert no_extra(torch.tensor([1, 6]), None).shape == (2, 16)
    learnt = AtomEmbedding(32, phys_embeds=True, phys_hidden_channels=5)
    assert learnt.phys_lin.in_features == 14 and learnt.z_embedding.embedding_dim == 27
    with pytest.raises(ValueError, match="no room"):
        AtomEmbedding(20, tag_hidden_channels=4, pg_hidden_channels=2)  # 20 - 4 - 14 - 4 = -2
    with pytest.raises(ValueError, match="pg_hidden_channels"):
        AtomEmbedding(32, pg_hidden_channels=-1)


@pytest.mark.parametrize("bad", [0, -3, MAX_ATOMIC_NUMBER + 1, 118])
def test_unknown_elements_raise(bad):
    with pytest.raises(ValueError, match=f"atomic numbers \\[{bad}\\]"):
        check_atomic_numbers(torch.tensor([1, bad, 6]))
    emb = AtomEmbedding(32, pg_hidden_channels=2)
    with pytest.raises(ValueError, match="not supported"):
        emb(torch.tensor([bad]), torch.tensor([0]))


def test_npz_cache_round_trip(tmp_path):
    path = str(tmp_path / "sub" / "elements.npz")
    first = element_table(path)
    assert (tmp_path / "sub" / "elements.npz").is_file()
    element_table.cache_clear()
    loaded = element_table(path)  # from the file, no mendeleev query
    assert loaded.names == first.names
    assert np.array_equal(loaded.properties, first.properties)
    assert np.array_equal(loaded.period, first.period) and np.array_equal(loaded.group, first.group)
    assert np.array_equal(loaded.properties, element_table().properties)


def test_packaged_table_equals_a_live_mendeleev_computation():
    from faenet.embedding import PACKAGED_TABLE, _compute_element_table

    live = _compute_element_table()
    with np.load(PACKAGED_TABLE, allow_pickle=False) as f:
        assert tuple(str(n) for n in f["names"]) == live.names
        np.testing.assert_array_equal(f["properties"], live.properties)
        np.testing.assert_array_equal(f["period"], live.period)
        np.testing.assert_array_equal(f["group"], live.group)
