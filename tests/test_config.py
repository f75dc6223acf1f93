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
    (lambda r: r["profiles"]["smoke"]["data"].update(cutof=5.0), r"profiles\.smoke\.data\.cutof: unknown key"),
    (lambda r: r["profiles"]["smoke"]["data"].update(cutoff=-1.0), r"profiles\.smoke\.data\.cutoff: .*greater than 0"),
    (lambda r: r["profiles"]["smoke"]["train"]["is2re"].update(epochs="ten"), r"epochs: .*integer"),
    (lambda r: r["train_matrix"].update(model=[]), r"train_matrix\.model: .*at least 1"),
    (lambda r: r["train_matrix"].update(symmetry=["sfa", "magic"]), r"train_matrix\.symmetry\.1: .*'magic'"),
    (lambda r: r.update(profile="huge"), r"profile 'huge' is not defined; choose one of"),
    (lambda r: r["profiles"]["smoke"]["data"].update(metals=["Cu", "Fe"]), r"data\.metals\.1: .*'Fe'"),
    (lambda r: r["profiles"]["smoke"]["data"].update(ood_metals=["Zn"]), r"ood_metals"),
    (lambda r: r.update(extra_section={}), r"extra_section: unknown key"),
])
def test_invalid_params_fail_naming_the_key(raw, mutate, match):
    with pytest.raises(ConfigError, match=match):
        parse_params(_bad(raw, mutate), check_models=False)


def test_unknown_model_and_hyperparameter_are_rejected(raw):
    with pytest.raises(ConfigError, match=r"train_matrix\.model: unknown model\(s\) \['nosuchnet'\]"):
        parse_params(_bad(raw, lambda r: r["train_matrix"]["model"].append("nosuchnet")))
    bad_hp = _bad(raw, lambda r: r["profiles"]["smoke"]["models"]["faenet"]["common"].update(hiden_channels=8))
    with pytest.raises(ConfigError, match=r"profiles\.smoke\.models\.faenet.*hiden_channels"):
        parse_params(bad_hp)


def test_runs_must_be_cells_of_the_matrix(raw):
    def mutate(r):
        r["train_matrix"]["symmetry"] = ["none", "sfa"]
        r["profiles"]["smoke"]["train"]["runs"] = {"faenet": {"is2re": ["full"]}}
    with pytest.raises(ConfigError, match=r"runs\.faenet\.is2re: \['full'\] not in train_matrix\.symmetry"):
        parse_params(_bad(raw, mutate))


def test_missing_params_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("profile: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}
