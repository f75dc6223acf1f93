"""A catalogue of bad params.yaml edits: each fails before any work, with one line per error that names the key,
the value and what is allowed (or the fix); no traceback, no dump of the params."""

from __future__ import annotations

import ast
import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.config import PARAMS_PATH, ConfigError, load_params, parse_params, stage_main
from pipeline.config import main as config_main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(PARAMS_PATH.read_text())


def smoke(r: dict[str, Any]) -> dict[str, Any]:
    return r["profiles"]["smoke"]


def _set(getter: Callable[[dict], dict], **kv: Any) -> Callable[[dict], None]:
    return lambda r: getter(r).update(kv)


TRAIN = "profiles\\.smoke\\.train"
HP = "profiles\\.smoke\\.hparams"
INT = "expected an integer"
CASES = [
    # id, mutation, pattern the message must match (key path, value, what is allowed)
    ("epochs-string", _set(lambda r: smoke(r)["train"]["is2re"], epochs="2"), rf"{TRAIN}\.is2re\.epochs: {INT}.*'2'"),
    ("epochs-bool", _set(lambda r: smoke(r)["train"]["is2re"], epochs=True), rf"{TRAIN}\.is2re\.epochs: {INT}.*True"),
    ("epochs-float", _set(lambda r: smoke(r)["train"]["is2re"], epochs=2.0), rf"{TRAIN}\.is2re\.epochs: {INT}.*2\.0"),
    ("lr-inf", _set(lambda r: smoke(r)["train"]["is2re"], lr=float("inf")),
     rf"{TRAIN}\.is2re\.lr: expected a finite number.*\(got inf\)"),
    ("lr-nan", _set(lambda r: smoke(r)["train"]["s2ef"], lr=float("nan")),
     rf"{TRAIN}\.s2ef\.lr: expected a finite number.*\(got nan\)"),
    ("lr-string", _set(lambda r: smoke(r)["train"]["is2re"], lr="1e-3"),
     rf"{TRAIN}\.is2re\.lr: expected a number .*'1e-3'"),
    ("float-bool", _set(lambda r: smoke(r)["train"]["s2ef"], force_coef=True),
     rf"{TRAIN}\.s2ef\.force_coef: expected a number.*True"),
    ("bool-string", _set(lambda r: smoke(r)["train"]["is2re"], normalize_targets="yes"),
     rf"{TRAIN}\.is2re\.normalize_targets: expected true or false.*'yes'"),
    ("negative-batch-size", _set(lambda r: smoke(r)["train"]["is2re"], batch_size=-4),
     rf"{TRAIN}\.is2re\.batch_size: .*greater than 0.*-4"),
    ("hparam-int-as-string", _set(lambda r: smoke(r)["hparams"]["faenet"]["common"], hidden_channels="96"),
     rf"{HP}\.faenet\.common\.hidden_channels: '96' is not a valid int \(FAENet\.__init__ takes "
     r"hidden_channels: int\); e\.g\. hidden_channels: 128"),
    ("hparam-word", _set(lambda r: smoke(r)["hparams"]["schnet"]["common"], hidden_channels="big"),
     rf"{HP}\.schnet\.common\.hidden_channels: 'big' is not a valid int \(SchNet\.__init__"),
    ("hparam-inf-cutoff", _set(lambda r: smoke(r)["hparams"]["forcenet"]["common"], cutoff=float("inf")),
     rf"{HP}\.forcenet\.common\.cutoff: inf is not a valid float"),
    ("hparam-union", _set(lambda r: smoke(r)["hparams"]["faenet"]["common"], skip_co=3),
     rf"{HP}\.faenet\.common\.skip_co: 3 is not a valid str \| bool \| None"),
    ("hparam-unknown-key", _set(lambda r: smoke(r)["hparams"]["faenet"]["qm9"], hiden_channels=8),
     rf"{HP}\.faenet\.qm9\.hiden_channels: model 'faenet' has no hyperparameter 'hiden_channels'; accepted: "
     r"\[.*'hidden_channels'"),
    ("hparam-unregistered-model", _set(lambda r: smoke(r)["hparams"], nosuchnet={"common": {}}),
     rf"{HP}\.nosuchnet: unknown model; registered: \[.*'schnet'"),
    ("expressivity-hparam-type", _set(lambda r: smoke(r)["expressivity"]["hparams"]["faenet"], hidden_channels=2.5),
     r"profiles\.smoke\.expressivity\.hparams\.faenet\.hidden_channels: 2\.5 is not a valid int"),
    ("override-unregistered-model", _set(lambda r: smoke(r)["train"]["overrides"], nosuchnet={"is2re": {}}),
     rf"{TRAIN}\.overrides\.nosuchnet: unknown model; registered: \["),
    ("override-unknown-task", _set(lambda r: smoke(r)["train"]["overrides"]["schnet"], oc22={"epochs": 2}),
     rf"{TRAIN}\.overrides\.schnet\.oc22: not an allowed key: expected one of 'is2re', 's2ef', 'qm7x', 'qm9' "
     "or 'md17'"),
    ("override-bad-value", _set(lambda r: smoke(r)["train"]["overrides"]["schnet"]["qm7x"], epochs="3"),
     rf"{TRAIN}\.overrides\.schnet\.qm7x\.epochs: {INT}.*'3'"),
    ("duplicate-seeds", _set(lambda r: smoke(r)["train"], seeds=[0, 1, 0]),
     rf"{TRAIN}\.seeds: listed twice: \['0'\]; list each value once"),
    ("duplicate-task-seeds", _set(lambda r: smoke(r)["train"]["qm9"], seeds=[3, 3]),
     rf"{TRAIN}\.qm9\.seeds: listed twice"),
    ("duplicate-ablation-seeds", _set(lambda r: smoke(r)["ablation"], seeds=[1, 1]),
     r"profiles\.smoke\.ablation\.seeds: listed twice"),
    # One validator (pipeline.config.Distinct) for every list whose entries must be unique: the message names
    # the repeated entry and the fix, whatever the list.
    ("duplicate-wrap-i-frame", _set(lambda r: smoke(r)["symmetry"]["wrap_i"], frames=["pca", "lattice", "pca"]),
     r"profiles\.smoke\.symmetry\.wrap_i\.frames: listed twice: \['pca'\]; list each value once"),
    ("duplicate-ablation-variant", _set(lambda r: smoke(r)["ablation"],
                                        variants=["Only r_ij", "FAENet (baseline)", "Only r_ij"]),
     r"profiles\.smoke\.ablation\.variants: listed twice: \['Only r_ij'\]; list each value once"),
    ("unknown-qm9-target", _set(lambda r: smoke(r)["train"]["qm9"], targets=["gap", "hardness"]),
     rf"{TRAIN}\.qm9\.targets\.1: expected one of 'mu', .*'gap'.* \(got 'hardness'\)"),
    ("duplicate-qm9-target", _set(lambda r: smoke(r)["train"]["qm9"], targets=["gap", "gap"]),
     rf"{TRAIN}\.qm9\.targets: listed twice: \['gap'\]"),
    ("model-cutoff-over-graph-cutoff", _set(lambda r: smoke(r)["hparams"]["faenet"]["qm7x"], cutoff=6.0),
     rf"{HP}\.faenet \(qm7x\): cutoff 6\.0 Å exceeds profiles\.smoke\.data\.qm7x\.cutoff 5\.0 Å.*"
     r"set the model's cutoff <= 5\.0 or raise data\.qm7x\.cutoff"),
    ("catalysis-graph-cutoff-too-small", _set(lambda r: smoke(r)["data"]["catalysis"], cutoff=4.0),
     rf"{HP}\.faenet \(is2re\): cutoff 6\.0 Å exceeds profiles\.smoke\.data\.catalysis\.cutoff 4\.0 Å"),
    ("unknown-symmetry-in-cell", _set(lambda r: r["train_cells"]["faenet-is2re-sfa"], symmetry="magic"),
     r"train_cells\.faenet-is2re-sfa\.symmetry: expected one of 'none', 'sfa'.* \(got 'magic'\)"),
    ("bad-cell-name", lambda r: r["train_cells"].update(
        {"faenet-sfa": {"model": "faenet", "dataset": "is2re", "symmetry": "sfa"}}),
     r"train_cells: faenet-sfa: a cell is named <model>-<dataset>-<symmetry>; rename it to 'faenet-is2re-sfa'"),
    ("unknown-profile", lambda r: r.update(profile="huge"),
     r"profile 'huge' is not defined; choose one of \['default', 'paper', 'smoke'\]"),
    ("missing-profile-key", lambda r: r.pop("profile"), r"^params\.yaml: profile: required key is missing"),
    ("missing-section", lambda r: r.pop("profiles"), r"^params\.yaml: profiles: required key is missing"),
    ("section-wrong-type", _set(smoke, data=[1, 2]),
     r"profiles\.smoke\.data: expected a mapping \(key: value lines\) \(got \[1, 2\]\)"),
    ("unknown-key-lists-allowed", _set(lambda r: smoke(r)["data"]["catalysis"], n_sytems=5),
     r"data\.catalysis\.n_sytems: unknown key \(check its spelling; allowed here: \[.*'n_systems'"),
    ("tuple-entry-string", _set(lambda r: smoke(r)["data"]["catalysis"], slab_size=[2, 2, "3"]),
     rf"data\.catalysis\.slab_size\.2: {INT}.*'3'"),
]


@pytest.mark.parametrize("mutate,pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_params_fail_with_a_message_naming_key_value_and_fix(raw, mutate, pattern):
    r = copy.deepcopy(raw)
    mutate(r)
    with pytest.raises(ConfigError) as info:
        parse_params(r)
    err = info.value
    assert any(re.search(pattern, line) for line in err.errors), "\n".join(err.errors)
    assert all("\n" not in line and len(line) < 600 for line in err.errors), err.errors  # one line, no dump
    assert "faenet-is2re-none" not in str(err) or "train_cells" in pattern  # the design is never dumped


def test_every_error_is_reported_not_only_the_first(raw):
    r = copy.deepcopy(raw)
    smoke(r)["train"]["is2re"].update(epochs="2", lr=float("inf"))
    smoke(r)["data"]["qm9"].update(n_molecules=True)
    with pytest.raises(ConfigError) as info:
        parse_params(r)
    assert [line.split(":")[1].strip() for line in info.value.errors] == [
        "profiles.smoke.data.qm9.n_molecules", "profiles.smoke.train.is2re.epochs", "profiles.smoke.train.is2re.lr"]
    r = copy.deepcopy(raw)  # registry checks too: every bad hyperparameter, every profile
    smoke(r)["hparams"]["faenet"]["common"].update(hidden_channels="96", num_filters="big")
    r["profiles"]["paper"]["hparams"]["schnet"]["is2re"]["cutoff"] = "6"
    with pytest.raises(ConfigError) as info:
        parse_params(r)
    assert len(info.value.errors) == 3 and "profiles.paper.hparams.schnet.is2re.cutoff" in str(info.value)


def test_a_yaml_int_is_a_valid_float_and_committed_profiles_validate(raw):
    r = copy.deepcopy(raw)
    smoke(r)["train"]["is2re"].update(lr=1, energy_coef=2)
    smoke(r)["hparams"]["faenet"]["common"].update(cutoff=6)
    p = parse_params(r)
    assert p.profiles["smoke"].train.is2re.lr == 1.0
    for name in ("smoke", "default", "paper"):  # each as the active one: all trained cells' checks apply
        assert parse_params({**copy.deepcopy(raw), "profile": name}).profile == name


@pytest.mark.parametrize("text,pattern", [
    ("profile: smoke\ntrain_cells:\n  a: {model: faenet\nprofiles: {}\n",
     r"^params\.yaml, line \d+, column \d+: not valid YAML: .*"),
    ("- profile\n- smoke\n", r"^params\.yaml: the top level must be a mapping .*got a list$"),
    ("", r"^params\.yaml: the file is empty"),
], ids=["malformed", "top-level-list", "empty"])
def test_file_level_errors_name_the_file_and_place(tmp_path, monkeypatch, text, pattern):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    monkeypatch.setattr("pipeline.config.PARAMS_PATH", path)  # as the repository's file: named params.yaml
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert len(info.value.errors) == 1 and re.search(pattern, info.value.errors[0]), info.value.errors


def test_malformed_yaml_gives_the_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("profile: smoke\nprofiles:\n  smoke:\n    train: {seeds: [0, 1}\n")
    pattern = rf"^{re.escape(str(path))}, line 4, column 25: not valid YAML: .*expected ',' or ']'"
    with pytest.raises(ConfigError, match=pattern):
        load_params(path)


def test_cli_prints_ok_or_one_line_per_error_with_exit_2(tmp_path, raw, capsys):
    # `python -m pipeline.config` is main(); the DVC test (test_validate_stage.py) runs it as a process.
    bad = copy.deepcopy(raw)
    smoke(bad)["train"]["is2re"]["epochs"] = True
    bad["profiles"]["default"]["train"]["seeds"] = [0, 0]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(bad))
    stamp = tmp_path / "validated.json"
    assert config_main(["--params", str(path), "--stamp", str(stamp)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith(f"error: {path}: profiles.") for line in lines), lines
    assert not stamp.exists()  # no stamp: DVC records the stage as failed
    assert config_main(["--stamp", str(stamp)]) == 0
    assert re.fullmatch(r"params\.yaml: OK \(profile \w+, \d+ cells\)\n", capsys.readouterr().out)
    assert stamp.read_text() == (ROOT / "metrics" / "validated.json").read_text()


def test_stage_main_prints_config_errors_one_a_line_and_returns_2(tmp_path, raw, capsys):
    bad = copy.deepcopy(raw)
    smoke(bad)["train"]["is2re"].update(epochs="2", lr=float("nan"))
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(bad))
    ran = []
    assert stage_main(ran.append, path=path) == 2 and ran == []  # the body never runs on bad params
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith(f"error: {path}: profiles.smoke.train.is2re.epochs: "), err

    def body(params):  # a stage's own ConfigError (found during its work) is reported the same way
        raise ConfigError(["first: bad", "second: bad"])

    assert stage_main(body, check_models=False) == 2
    assert capsys.readouterr().err.splitlines() == ["error: first: bad", "error: second: bad"]
    assert stage_main(lambda params: 0 if params.profile else 1, check_models=False) == 0


def test_every_stage_main_goes_through_stage_main():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    modules = {re.search(r"python -m pipeline\.(\w+)", (st.get("do") or st)["cmd"]).group(1) for st in stages.values()}
    assert {"fetch", "train", "ablation", "symmetry", "expressivity", "benchmark", "report"} <= modules
    for name in sorted(modules - {"config"}):
        tree = ast.parse((ROOT / "pipeline" / f"{name}.py").read_text())
        main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
        calls = {getattr(c.func, "id", None) for c in ast.walk(main) if isinstance(c, ast.Call)}
        assert "stage_main" in calls and "load_params" not in calls, name
