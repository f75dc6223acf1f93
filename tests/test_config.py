"""params.yaml validation: errors name the key and what is allowed, before any work."""

import copy

import pytest
import yaml

from pipeline.config import PARAMS_PATH, ConfigError, flatten, load_params, parse_params


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load(PARAMS_PATH.read_text())


def _bad(raw, mutate):
    r = copy.deepcopy(raw)
    mutate(r)
    return r


def test_repository_params_are_valid():
    p = load_params()
    assert p.profile in p.profiles
    assert {"smoke", "default", "paper"} <= set(p.profiles)


@pytest.mark.parametrize("mutate,match", [
    (lambda r: r["profiles"]["smoke"]["data"]["catalysis"].update(cutof=5.0),
     r"profiles\.smoke\.data\.catalysis\.cutof: unknown key"),
    (lambda r: r["profiles"]["smoke"]["data"]["catalysis"].update(cutoff=-1.0),
     r"profiles\.smoke\.data\.catalysis\.cutoff: .*greater than 0"),
    (lambda r: r["profiles"]["smoke"]["data"]["qm7x"].update(n_molecules=0), r"qm7x\.n_molecules: .*greater than 0"),
    (lambda r: r["profiles"]["smoke"]["train"]["is2re"].update(epochs="ten"), r"epochs: .*integer"),
    (lambda r: r.update(train_cells={}), r"train_cells: .*at least 1"),
    (lambda r: r["train_cells"]["faenet-is2re-sfa"].update(symmetry="magic"),
     r"train_cells\.faenet-is2re-sfa\.symmetry: .*'sfa'"),
    (lambda r: r["train_cells"].update({"faenet-oc22-sfa": {"model": "faenet", "dataset": "oc22", "symmetry": "sfa"}}),
     r"train_cells\.faenet-oc22-sfa\.dataset"),
    (lambda r: r["train_cells"]["faenet-is2re-sfa"].update(sym="sfa"), r"train_cells\.faenet-is2re-sfa\.sym: unknown"),
    (lambda r: r.update(profile="huge"), r"profile 'huge' is not defined; choose one of"),
    (lambda r: r["profiles"]["smoke"]["data"]["catalysis"].update(metals=["Cu", "Fe"]),
     r"data\.catalysis\.metals\.1: .*'Fe'"),
    (lambda r: r["profiles"]["smoke"]["data"]["catalysis"].update(ood_metals=["Zn"]), r"ood_metals"),
    (lambda r: r["profiles"]["smoke"]["data"]["catalysis"].update(ood_alloys=["CuZn"]), r"CuZn"),
    (lambda r: r["profiles"]["smoke"]["data"]["catalysis"].update(ood_alloys=["Cu3Au"]), r"Au.*no training"),
    (lambda r: r["profiles"]["smoke"]["data"]["catalysis"].update(alloys=["Cu"]), r"pure metal"),
    (lambda r: r["profiles"]["smoke"]["train"]["is2re"].update(targets=["gap"]), r"only qm9 trains"),
    (lambda r: r["profiles"]["smoke"]["train"]["qm9"].update(targets=[]), r"qm9\.targets: name at least one"),
    (lambda r: r.update(extra_section={}), r"extra_section: unknown key"),
])
def test_invalid_params_fail_naming_the_key(raw, mutate, match):
    with pytest.raises(ConfigError, match=match):
        parse_params(_bad(raw, mutate), check_models=False)


def test_unknown_model_and_hyperparameter_are_rejected(raw):
    new = {"nosuchnet-is2re-none": {"model": "nosuchnet", "dataset": "is2re", "symmetry": "none"}}
    with pytest.raises(ConfigError, match=r"train_cells: unknown model\(s\) \['nosuchnet'\]"):
        parse_params(_bad(raw, lambda r: r["train_cells"].update(new)))
    bad_hp = _bad(raw, lambda r: r["profiles"]["smoke"]["hparams"]["faenet"]["common"].update(hiden_channels=8))
    with pytest.raises(ConfigError, match=r"profiles\.smoke\.hparams\.faenet.*hiden_channels"):
        parse_params(bad_hp)
    bad_expr = _bad(raw, lambda r: r["profiles"]["smoke"]["expressivity"].update(models=["faenet-magic"]))
    with pytest.raises(ConfigError, match=r"expressivity\.models: 'faenet-magic'"):
        parse_params(bad_expr)


def test_a_cell_is_named_after_its_model_dataset_and_symmetry(raw):
    def mutate(r):
        r["train_cells"]["faenet-is2re-sfa"]["symmetry"] = "full"
    with pytest.raises(ConfigError, match=r"train_cells: faenet-is2re-sfa: .*rename it to 'faenet-is2re-full'"):
        parse_params(_bad(raw, mutate), check_models=False)


def test_design_view_groups_cells_by_model_and_dataset(raw):
    p = parse_params(raw, check_models=False)
    assert p.design["faenet"]["is2re"] == ["none", "sfa", "full", "se3-sfa", "da"]
    assert p.design["forcenet"] == {"is2re": ["none", "sfa", "da"], "s2ef": ["none"]}
    assert len(p.designed_cells()) == len(p.train_cells)


def test_design_and_profile_filter_decide_which_cells_train(raw):
    p = parse_params(_bad(raw, lambda r: r.update(profile="smoke")), check_models=False)
    assert p.trains("faenet", "is2re", "sfa") and p.trains("schnet", "is2re", "none")
    assert not p.trains("faenet", "is2re", "da")          # designed, but smoke's `only` filters it out
    assert not p.trains("schnet", "is2re", "sfa")         # not designed
    assert set(p.trained_cells()) <= set(p.designed_cells())
    full = parse_params(_bad(raw, lambda r: r.update(profile="default")), check_models=False)
    assert full.trained_cells() == full.designed_cells()  # no filter: every designed cell


def test_missing_params_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("profile: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}
