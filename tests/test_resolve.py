"""pipeline.resolve: the one cell -> run resolution, on every cell of every profile of the committed params.yaml
(precedence re-computed from the raw YAML, force modes, frame dims, settings, run keys), hand-written
expectations for a few cells, the stages' documented departures (ablation, benchmark), and its errors."""

from __future__ import annotations

import copy
from dataclasses import asdict

import pytest
import yaml

from pipeline import benchmark as bm
from pipeline.ablation import VAL_SPLITS, resolve_variant
from pipeline.config import (
    CATALYSIS,
    EVAL_SPLITS,
    FORCE_TASKS,
    PARAMS_PATH,
    ConfigError,
    TaskTrainConfig,
    digest,
    parse_params,
)
from pipeline.resolve import force_mode, resolve_cell, resolve_run

RAW = yaml.safe_load(PARAMS_PATH.read_text())
PARAMS = parse_params(RAW, check_models=False)
PROVENANCE = {"git_commit": "c0ffee", "git_dirty": "false"}


def _params(profile: str):
    return PARAMS.model_copy(update={"profile": profile})


def _cells():
    return [(p, name, c) for p in PARAMS.profiles for name, c in PARAMS.train_cells.items()]


def _expected_from_yaml(profile: str, model: str, task: str) -> tuple[dict, dict]:
    """(hparams without regress_forces, task settings) straight from the YAML: the documented precedence."""
    prof = RAW["profiles"][profile]
    spec = prof.get("hparams", {}).get(model, {})
    hp = {**spec.get("common", {}), **spec.get(task, {})}
    train = prof.get("train", {})
    settings = {**TaskTrainConfig().model_dump(), **train.get(task, {}),
                **train.get("overrides", {}).get(model, {}).get(task, {})}
    return hp, settings


@pytest.mark.parametrize(("profile", "name", "cell"), _cells(), ids=[f"{p}:{n}" for p, n, _ in _cells()])
def test_every_cell_resolves_by_the_documented_rules(profile, name, cell):
    from baselines.registry import check_hparams

    params = _params(profile)
    rc = resolve_cell(params, cell.model, cell.dataset, cell.symmetry)
    hp, settings = _expected_from_yaml(profile, cell.model, cell.dataset)
    assert rc.name == name and rc.profile == profile
    # Hyperparameters: common < task, and the force mode always set last.
    assert rc.hparams == {**hp, "regress_forces": rc.force_mode}
    # One force-mode rule: force tasks train with a named mode the model accepts, other tasks energy only.
    if cell.dataset in FORCE_TASKS:
        assert rc.force_mode == settings["regress_forces"] and rc.force_mode and rc.needs_forces
    else:
        assert rc.force_mode == "" and not rc.needs_forces
    if params.trains(cell.model, cell.dataset, cell.symmetry):  # (smoke's untrained s2ef baselines lack a mode)
        check_hparams(cell.model, rc.hparams)
    assert rc.frame_dim == (2 if cell.dataset in CATALYSIS else 3)
    assert rc.rewiring == settings["rewiring"]
    assert rc.eval_splits == EVAL_SPLITS[cell.dataset]
    own_seeds = settings["seeds"]
    assert rc.seeds == tuple(own_seeds if own_seeds is not None else RAW["profiles"][profile]["train"]["seeds"])
    assert rc.targets == (tuple(settings["targets"]) if cell.dataset == "qm9" else ("energy",))
    # Runs: settings = the task settings + seed + eval batch size; the key is what work/ is filed under.
    keys = set()
    for seed in rc.seeds:
        for target in rc.targets:
            spec = resolve_run(params, rc, seed, target, data_hash="h", provenance_tags=PROVENANCE)
            s = asdict(spec.settings)
            assert s["seed"] == seed and s["eval_batch_size"] == rc.eval_batch_size
            assert {k: v for k, v in s.items() if k not in ("seed", "eval_batch_size")} == {
                k: settings[k] for k in s if k not in ("seed", "eval_batch_size")}
            assert spec.key == digest({"model": cell.model, "hparams": rc.hparams,
                                       "settings": spec.settings.digest(), "symmetry": cell.symmetry,
                                       "target": target, "seed": seed, "data": "h", "rewiring": rc.rewiring})
            assert spec.folder == name and spec.frame_dim == rc.frame_dim and spec.tags["cell"] == name
            assert spec.tags["dvc_stage"] == f"train@{name}" and spec.run_params["target"] == target
            assert spec.run_params["model.regress_forces"] == rc.force_mode
            keys.add(spec.key)
    assert len(keys) == len(rc.seeds) * len(rc.targets)
    # A cell resolved by its train_cells name is the same run.
    by_name = resolve_run(params, name, rc.seeds[0], rc.targets[0], data_hash="h", provenance_tags=PROVENANCE)
    assert by_name == resolve_run(params, rc, rc.seeds[0], rc.targets[0], data_hash="h", provenance_tags=PROVENANCE)


_SLABS = [c for c in _cells() if c[2].dataset in CATALYSIS]  # the benchmark measures OC20-like slabs only


@pytest.mark.parametrize(("profile", "name", "cell"), _SLABS, ids=[f"{p}:{n}" for p, n, _ in _SLABS])
def test_benchmark_resolves_what_the_train_stage_trains(profile, name, cell):
    params = _params(profile)
    spec = resolve_run(params, name, 0, data_hash="h", provenance_tags=PROVENANCE)
    resolve = bm.resolver(params)
    got = resolve("profile", cell.model, cell.dataset, cell.symmetry)
    assert got.hparams == spec.hparams and got.frame_dim == spec.frame_dim
    assert got.rewired == (spec.rewiring == "remove-tag-0") and got.needs_forces == (cell.dataset == "s2ef")
    paper = resolve("paper", cell.model, cell.dataset, cell.symmetry)
    assert paper.hparams == resolve_cell(_params("paper"), cell.model, cell.dataset, cell.symmetry).hparams


def test_hand_written_cells():
    default = _params("default")
    rc = resolve_cell(default, "faenet", "s2ef", "sfa")
    assert rc.hparams == {"hidden_channels": 96, "num_filters": 64, "num_interactions": 3, "num_gaussians": 32,
                          "tag_hidden_channels": 16, "pg_hidden_channels": 16, "cutoff": 6.0,
                          "regress_forces": "direct_with_gradient_target"}
    s = rc.settings(1)
    assert (s.epochs, s.batch_size, s.lr, s.warmup_steps, s.force_coef, s.energy_grad_coef, s.seed) == (
        3, 16, 0.001, 30, 30.0, 5.0, 1)
    assert (rc.rewiring, rc.frame_dim, rc.seeds) == ("none", 2, (0, 1, 2))

    rc = resolve_cell(default, "faenet", "qm7x", "sfa")
    assert rc.hparams["tag_hidden_channels"] == 0 and rc.hparams["cutoff"] == 5.0
    assert rc.hparams["graph_norm"] is False and rc.hparams["hidden_channels"] == 96
    assert rc.force_mode == "direct_with_gradient_target" and rc.frame_dim == 3
    assert rc.settings(0).energy_grad_coef == 15.0 and rc.settings(0).element_shift is True

    rc = resolve_cell(default, "dimenet_pp", "s2ef", "none")
    assert rc.force_mode == "from_energy" and rc.seeds == (0, 1, 2) and rc.hparams["detach_angles"] is True
    assert rc.hparams["cutoff"] == 5.0

    rc = resolve_cell(default, "faenet", "qm9", "sfa")
    assert rc.targets == ("mu", "homo", "gap") and rc.seeds == (0, 1, 2) and rc.force_mode == ""
    assert rc.eval_splits == ("val", "test")

    assert resolve_cell(_params("smoke"), "schnet", "qm7x", "none").force_mode == "from_energy"
    paper = resolve_cell(_params("paper"), "faenet", "is2re", "sfa")
    assert paper.rewiring == "remove-tag-0" and paper.hparams["hidden_channels"] == 384
    assert paper.settings(2).epochs == 12 and paper.seeds == (0, 1, 2, 3, 4)
    # The paper profile at the default profile's request (the benchmark's paper hparams).
    assert resolve_cell(default, "faenet", "is2re", "sfa", profile="paper").hparams == paper.hparams

    spec = resolve_run(default, "faenet-is2re-sfa", 1, data_hash="abc", provenance_tags=PROVENANCE)
    assert spec.name == "faenet-is2re-sfa-seed1" and spec.tags == {
        **PROVENANCE, "dvc_stage": "train@faenet-is2re-sfa", "dataset_hash": "abc", "profile": "default",
        "params_hash": spec.tags["params_hash"], "cell": "faenet-is2re-sfa"}
    assert spec.run_params["model.hidden_channels"] == 96 and spec.run_params["train.epochs"] == 8
    assert spec.run_params["data.n_systems"] == 900 and spec.config["target"] == "energy"


def test_ablation_variants_are_documented_departures():
    paper_hp = PARAMS.profiles["paper"].model_hparams("faenet", "is2re")  # Table 7, the ablation's base
    assert {k: paper_hp[k] for k in ("mp_type", "complex_mp", "energy_head", "skip_co", "max_num_neighbors")} == {
        "mp_type": "base", "complex_mp": True, "energy_head": "weighted-av-final-embeds", "skip_co": "concat",
        "max_num_neighbors": 40}
    for profile in ("smoke", "default"):
        params = _params(profile)
        base = resolve_variant(params)
        prof_hp = params.active.model_hparams("faenet", "is2re")
        assert base.hparams == {**paper_hp, **prof_hp, "regress_forces": ""}
        assert base.eval_splits == VAL_SPLITS and base.symmetry == params.active.ablation.symmetry
        epochs = params.active.ablation.epochs or params.active.train.is2re.epochs
        assert base.settings(0).epochs == epochs
        basic = resolve_variant(params, "Basic MP")
        assert basic.hparams["mp_type"] == "simple" and basic.hparams["num_filters"] == basic.hparams["hidden_channels"]
        assert resolve_variant(params, "Only r_ij").hparams == {**base.hparams, "edge_embed_type": "rij"}
        spec = resolve_run(params, base, 0, data_hash="h", folder="ablation/x", stage="ablation",
                           provenance_tags=PROVENANCE)
        assert "cell" not in spec.tags and spec.tags["dvc_stage"] == "ablation" and spec.folder == "ablation/x"


def test_a_force_task_without_a_force_mode_is_a_config_error():
    raw = copy.deepcopy(RAW)
    raw["profiles"]["default"]["train"]["overrides"]["faenet"]["s2ef"]["regress_forces"] = ""
    params = parse_params(raw, check_models=False)
    with pytest.raises(ConfigError, match=r"profiles\.default\.train\.s2ef\.regress_forces .*faenet\.s2ef.*"
                                          r"force targets"):
        resolve_cell(params, "faenet", "s2ef", "sfa")
    assert force_mode(params, "faenet", "is2re") == ""  # energy-only tasks are unaffected


def test_bad_arguments_name_the_value():
    with pytest.raises(ConfigError, match="eval splits .*'val_ood'.* not splits of is2re"):
        resolve_cell(PARAMS, "faenet", "is2re", "sfa", eval_splits=["val_id", "val_ood"])
    with pytest.raises(ConfigError, match="profile 'gpu' is not defined"):
        resolve_cell(PARAMS, "faenet", "is2re", "sfa", profile="gpu")
    with pytest.raises(ConfigError, match="train_cells has no 'faenet-is2re-nope'"):
        resolve_run(PARAMS, "faenet-is2re-nope", 0, data_hash="h", provenance_tags=PROVENANCE)
    with pytest.raises(ConfigError, match="target 'gap' is not one of"):
        resolve_run(PARAMS, "faenet-is2re-sfa", 0, "gap", data_hash="h", provenance_tags=PROVENANCE)
    with pytest.raises(ConfigError, match="unknown row 'Nope'"):
        resolve_cell(PARAMS, "faenet", "is2re", "sfa", table6_row="Nope")


def test_stream_and_num_workers_reach_the_run_and_stay_out_of_its_key():
    # Streaming and loader workers give the same batches and numbers (tests/test_streaming.py): the default
    # runs keep their keys; only a streamed element-shift normaliser (float rounding) changes one.
    def spec(stream: bool, workers: int, cell: str = "faenet-is2re-sfa"):
        raw = copy.deepcopy(RAW)
        raw["profiles"]["default"]["train"].update(stream=stream, num_workers=workers)
        return resolve_run(parse_params(raw, check_models=False), cell, 0, data_hash="h",
                           provenance_tags=PROVENANCE)

    base = resolve_run(PARAMS, "faenet-is2re-sfa", 0, data_hash="h", provenance_tags=PROVENANCE)
    assert (base.num_workers, base.stream) == (0, False)
    fast = spec(True, 4)
    assert (fast.num_workers, fast.stream) == (4, True) and fast.key == base.key
    shifted = [c for c, v in PARAMS.train_cells.items() if v.dataset == "qm7x"]
    if shifted:
        assert spec(True, 0, shifted[0]).key != spec(False, 4, shifted[0]).key == resolve_run(
            PARAMS, shifted[0], 0, data_hash="h", provenance_tags=PROVENANCE).key
    raw = copy.deepcopy(RAW)
    raw["profiles"]["default"]["train"]["num_workers"] = -1
    with pytest.raises(ConfigError, match="num_workers"):
        parse_params(raw, check_models=False)
