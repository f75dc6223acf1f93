"""baselines.registry: discovery of the package's modules, user plugins, lazy entries, clear errors."""

import importlib.util
import textwrap
from pathlib import Path

import pytest
import torch
from ase.build import molecule
from torch_geometric.data import Batch, Data

import baselines
from baselines import registry
from faenet.graph import radius_graph

PLUGIN = textwrap.dedent('''
    import torch
    from torch import nn
    from torch_geometric.utils import scatter

    from baselines.registry import register


    @register("tiny_plugin")
    class TinyPlugin(nn.Module):
        def __init__(self, hidden_channels: int = 4, regress_forces: str = ""):
            super().__init__()
            self.regress_forces = regress_forces
            self.emb = nn.Embedding(100, hidden_channels)
            self.out = nn.Linear(hidden_channels, 1)

        def forward(self, data):
            e = scatter(self.out(self.emb(data.atomic_numbers)), data.batch, dim=0, dim_size=data.num_graphs)
            return {"energy": e.squeeze(-1)}
''')


@pytest.fixture
def isolated(monkeypatch):
    """Registry state restored after the test, so plugins and fakes do not leak into other tests."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_DISCOVERED", set(registry._DISCOVERED))


def _molecule_batch():
    atoms = molecule("CH3CH2OH")
    pos = torch.tensor(atoms.positions, dtype=torch.float32)
    ei, off = radius_graph(pos, 6.0, 50)
    n = len(atoms)
    rec = Data(pos=pos, atomic_numbers=torch.tensor(atoms.numbers), natoms=n, tags=torch.full((n,), -1),
               fixed=torch.zeros(n, dtype=torch.long), cell=torch.zeros(1, 3, 3),
               pbc=torch.zeros(1, 3, dtype=bool), edge_index=ei, cell_offsets=off, y=0.0)
    return Batch.from_data_list([rec, rec])


def test_package_modules_are_discovered_and_faenet_is_lazy():
    names = registry.available_models()
    assert {"schnet", "dimenet_pp", "forcenet", "faenet"} <= set(names)
    assert names == sorted(names)
    # Every module file in baselines/ (not "_*", not registry or the helpers in common) registered something:
    # one file is enough.
    folder = Path(registry.__file__).parent
    modules = {p.stem for p in folder.glob("*.py")
               if not p.stem.startswith("_") and p.stem not in registry._SKIP_MODULES}
    assert "schnet" in modules and "common" not in modules
    owners = {registry.get_model_class(n).__module__.rpartition(".")[2] for n in names if n != "faenet"}
    assert modules <= owners
    # "faenet" resolves to faenet.model.FAENet when that module exists, with a clear ImportError otherwise.
    if importlib.util.find_spec("faenet.model") is None:
        with pytest.raises(ImportError, match="faenet.model"):
            registry.get_model_class("faenet")
    else:
        assert registry.get_model_class("faenet").__name__ == "FAENet"


def test_unknown_model_lists_registered_names():
    with pytest.raises(ValueError, match=r"unknown model 'nope'.*schnet"):
        registry.get_model_class("nope")
    with pytest.raises(ValueError, match="unknown model"):
        baselines.build_model("nope")


def test_unknown_hparam_names_model_key_and_accepted_keys():
    with pytest.raises(ValueError) as err:
        baselines.build_model("schnet", hidden=8)
    msg = str(err.value)
    assert "'schnet'" in msg and "'hidden'" in msg and "hidden_channels" in msg and "regress_forces" in msg
    with pytest.raises(ValueError, match=r"'dimenet_pp'.*'num_layers'"):
        registry.check_hparams("dimenet_pp", {"num_layers": 2})
    # Values of regress_forces are checked against the class's force_modes without building.
    with pytest.raises(ValueError, match=r"regress_forces='direct'.*from_energy"):
        registry.check_hparams("schnet", {"regress_forces": "direct"})
    registry.check_hparams("forcenet", {"regress_forces": "direct", "hidden_channels": 8})


def test_plugin_folder_registers_and_builds(isolated, tmp_path):
    (tmp_path / "tiny_plugin.py").write_text(PLUGIN)
    (tmp_path / "_private.py").write_text("raise RuntimeError('underscore files must be skipped')\n")
    assert registry.discover([tmp_path]) == ["tiny_plugin"]
    assert "tiny_plugin" in registry.available_models()
    assert registry.accepted_hparams("tiny_plugin") == ["hidden_channels", "regress_forces"]
    model = baselines.build_model("tiny_plugin", hidden_channels=3)
    assert model.emb.weight.shape == (100, 3)
    out = model(_molecule_batch())
    assert out["energy"].shape == (2,)
    assert torch.allclose(out["energy"][0], out["energy"][1])
    with pytest.raises(ValueError, match=r"'tiny_plugin'.*'width'.*hidden_channels"):
        baselines.build_model("tiny_plugin", width=3)
    assert registry.get_presets("tiny_plugin") == {}
    # A second discovery of the same folder neither re-imports nor re-registers.
    assert registry.discover([str(tmp_path)]) == []
    with pytest.raises(ValueError, match="does not exist"):
        registry.discover([tmp_path / "missing"])


def test_name_clash_and_bad_names_are_errors(isolated):
    class Other(torch.nn.Module):
        pass

    with pytest.raises(ValueError, match="already registered"):
        registry.register("schnet")(Other)
    with pytest.raises(ValueError, match="non-empty string"):
        registry.register("")
    registry.register("other")(Other)
    assert registry.get_model_class("other") is Other
    assert registry.register("other")(Other) is Other  # same class again: fine


def test_lazy_entries_and_kwargs_constructors(isolated):
    registry.register_lazy("lazy_schnet", "baselines.schnet", "SchNet")
    assert registry.get_model_class("lazy_schnet").__name__ == "SchNet"
    registry.register_lazy("lazy_missing", "no_such_module_xyz", "Model")
    assert "lazy_missing" in registry.available_models()
    with pytest.raises(ImportError, match="no_such_module_xyz"):
        registry.get_model_class("lazy_missing")

    @registry.register("kw_model")
    class KwModel(torch.nn.Module):
        def __init__(self, **kwargs):
            super().__init__()
            self.kwargs = kwargs

    assert registry.accepted_hparams("kw_model") is None
    assert baselines.build_model("kw_model", anything=1).kwargs == {"anything": 1}


def test_presets_are_accepted_by_their_constructors():
    for name in ("schnet", "dimenet_pp", "forcenet"):
        presets = registry.get_presets(name)
        assert set(presets) == {"small"}  # the paper's configurations are params.yaml's, not module copies
        registry.check_hparams(name, presets["small"])


def test_baseline_defaults_are_the_paper_profile_is2re_configuration():
    """The docstrings' "defaults are OCP's IS2RE configuration": params.yaml's paper profile (the one
    definition) sets nothing a baseline's constructor does not default to."""
    import inspect

    from pipeline.config import load_params

    paper = load_params().profiles["paper"]
    for name in ("schnet", "dimenet_pp", "forcenet"):
        hp = paper.model_hparams(name, "is2re")
        defaults = {k: p.default for k, p in inspect.signature(registry.get_model_class(name)).parameters.items()}
        assert hp and {k: defaults[k] for k in hp} == hp, name
