"""Benchmark machinery without timing assertions: inputs, the measurement plan and its protocols, the
ratios / costs / speed-target logic on synthetic numbers, the measurement helpers' bookkeeping, and the
headline and report of a committed default-profile results file (``tests/fixtures/benchmark``)."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch_geometric.data import Batch

from faenet import benchmarking as B
from faenet.data.dataset import remove_tag0
from faenet.frames import num_frames
from faenet.model import FAENet
from faenet.symmetry import SymmetryWrapper
from faenet.throughput import (
    fit_power_law,
    measure_forward_throughput_interleaved,
    measure_on_device,
    measure_training_step,
    oc20_like_slabs,
    peak_rss_increase,
)
from pipeline import benchmark as bm
from pipeline.config import PARAMS_PATH, parse_params
from pipeline.reporting import benchmark as R

FIXTURES = Path(__file__).parent / "fixtures" / "benchmark"
N_FRAMES = {m: num_frames(2, m.startswith("se3")) for m in ("full", "se3-full")}


def _params(**bench):
    raw = yaml.safe_load(PARAMS_PATH.read_text())
    raw["profile"] = "smoke"
    raw["profiles"]["smoke"]["benchmark"] = {**raw["profiles"]["smoke"]["benchmark"], **bench}
    return parse_params(raw, check_models=False)


def test_oc20_like_slabs_are_deterministic_with_oc20_tags():
    a, b = oc20_like_slabs(3, seed=1), oc20_like_slabs(3, seed=1, forces=True)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.pos, y.pos) and torch.equal(x.edge_index, y.edge_index)
    g = a[0]
    n_slab = 4 * 4 * 4
    assert int(g.natoms) == n_slab + 1 and g.pbc.tolist() == [[True, True, False]]
    assert int((g.tags[:n_slab] == 0).sum()) == 32 and int((g.tags[:n_slab] == 1).sum()) == 32  # bottom half fixed
    assert g.tags[n_slab:].tolist() == [2] and torch.equal(g.fixed, (g.tags == 0).long())
    assert torch.bincount(g.edge_index[1]).max() <= 50
    assert b[0].force.shape == (int(b[0].natoms), 3)
    assert int(remove_tag0(g).natoms) == 33
    assert not torch.equal(oc20_like_slabs(1, seed=2)[0].pos, a[0].pos)


def test_fit_power_law_recovers_the_exponent():
    x = [10.0, 20.0, 40.0, 80.0]
    fit = fit_power_law(x, [5.0 * v ** -1.3 for v in x])
    assert fit["exponent"] == pytest.approx(-1.3) and fit["prefactor"] == pytest.approx(5.0)
    assert fit["r2"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="positive"):
        fit_power_law([1, 2], [0, 1])


def test_peak_rss_increase_sees_an_allocation():
    keep = []
    res = peak_rss_increase(lambda: keep.append(torch.ones(64 * 2**20 // 4)))  # 64 MiB, touched
    if res["peak_mib"] is None and not sys.platform.startswith("linux"):
        pytest.skip(res["reason"])  # the RSS high-water reset is a Linux kernel interface
    assert res["peak_mib"] is not None, res.get("reason")
    assert 48 < res["peak_mib"] < 200


def _tiny_model() -> SymmetryWrapper:
    torch.manual_seed(0)
    net = FAENet(hidden_channels=32, num_filters=16, num_gaussians=8, num_interactions=1, tag_hidden_channels=4,
                 pg_hidden_channels=4, cutoff=5.0)
    return SymmetryWrapper(net, "sfa", frame_dim=2)


def test_training_step_does_not_touch_the_model_and_reports_times():
    model = _tiny_model()
    before = copy.deepcopy(model.state_dict())
    batches = [Batch.from_data_list(oc20_like_slabs(2, size=(2, 2, 2), forces=True))]
    res = measure_training_step(model, batches, needs_forces=False, warmup=1, repeats=2, memory=True)
    assert len(res["times_s"]) == 2 and res["seconds_per_sample"] > 0 and res["num_samples"] == 2
    assert "peak_memory" in res
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and model.training  # restored, untouched


def test_interleaved_throughput_times_every_model_on_the_same_batches():
    batches = [Batch.from_data_list(oc20_like_slabs(2, size=(2, 2, 2)))]
    models = {"a": _tiny_model(), "b": _tiny_model()}
    res = measure_forward_throughput_interleaved(models, batches, warmup=0, repeats=3, memory=True)
    for r in res.values():
        assert len(r["times_s"]) == 3 and r["num_samples"] == 2 and r["grad_mode"] == "inference_mode"
        assert "peak_memory" in r and 0 < r["cpu_utilisation"]
    assert all(m.training for m in models.values())  # modes restored


def test_plan_covers_every_model_method_and_protocol_and_shares_identical_measurements():
    params = _params(batch_size=4, n_batches=1, max_batch_size=4, max_graphs={"dimenet_pp": 2})
    jobs, protocols = bm.plan(params)
    ids = {j.id for j in jobs}
    assert len(ids) == len(jobs)
    for proto in ("paper", "same_graph_full", "same_graph_rewired"):
        per = protocols[proto]["profile"]
        assert {"faenet/none", "faenet/sfa", "faenet/full", "schnet/none", "forcenet/sfa"} <= set(per)
        assert set(per.values()) <= ids
    # capped at the same batch size, the paper protocol is the same-graph measurement (FAENet rewired)
    assert protocols["paper"]["profile"]["faenet/sfa"] == protocols["same_graph_rewired"]["profile"]["faenet/sfa"]
    assert protocols["paper"]["profile"]["schnet/none"] == protocols["same_graph_full"]["profile"]["schnet/none"]
    assert all(j.n_graphs == 2 for j in jobs if j.model == "dimenet_pp")
    # uncapped, the authors' batch sizes give distinct paper-protocol measurements
    jobs2, protocols2 = bm.plan(_params(batch_size=4, n_batches=1, max_batch_size=None))
    paper = {j.id: j for j in jobs2}[protocols2["paper"]["profile"]["faenet/sfa"]]
    assert (paper.graph, paper.batch_size, paper.n_graphs) == ("rewired", 256, 256)
    assert "paper" not in bm.hparam_sets(params) and "paper" in bm.hparam_sets(_params(paper_hparams=True))


def _fake_result():
    """Measurements with known throughputs / training times (samples/s, s per sample)."""
    rows = {  # (model, method, graph): (inference samples/s, training s/sample)
        ("faenet", "none", "full"): (10.0, 0.3), ("faenet", "sfa", "full"): (9.0, 0.33),
        ("faenet", "full", "full"): (2.5, 1.2), ("faenet", "sfa", "rewired"): (30.0, 0.1),
        ("faenet", "none", "rewired"): (32.0, 0.09), ("faenet", "full", "rewired"): (8.0, 0.4),
        ("schnet", "none", "full"): (20.0, 0.2), ("schnet", "none", "rewired"): (50.0, 0.08),
    }
    meas, protocols = [], {"paper": {"paper": {}}, "same_graph_full": {"paper": {}},
                           "same_graph_rewired": {"paper": {}}}
    for (model, method, graph), (inf, tr) in rows.items():
        mid = f"paper:{model}-{method}:{graph}"
        meas.append({"id": mid, "hparams": "paper", "model": model, "symmetry": method, "task": "is2re",
                     "graph": graph, "inference": {"samples_per_s": inf}, "training": {"seconds_per_sample": tr}})
        protocols[f"same_graph_{graph}"]["paper"][f"{model}/{method}"] = mid
        if (model == "faenet") == (graph == "rewired"):
            protocols["paper"]["paper"][f"{model}/{method}"] = mid
    return {"hparam_sets": ["paper"], "measurements": meas, "protocols": protocols}


def test_ratios_costs_and_targets_from_known_numbers():
    result = _fake_result()
    result["ratios"] = R.throughput_ratios(result)
    r = result["ratios"]["paper"]["faenet-sfa/schnet"]
    assert r["inference"]["same_graph_full"] == pytest.approx(9 / 20)
    assert r["inference"]["same_graph_rewired"] == pytest.approx(30 / 50)
    assert r["inference"]["paper_protocol"] == pytest.approx(30 / 20)  # FAENet rewired vs SchNet full
    assert r["inference"]["paper"] == pytest.approx(2469 / 3597)
    assert r["epoch_time"]["same_graph_full"] == pytest.approx(0.2 / 0.33)
    assert r["epoch_time"]["paper"] == pytest.approx(9 / 12)
    result["symmetry_costs"] = R.symmetry_costs(result, N_FRAMES)
    c = result["symmetry_costs"]["paper"]
    assert c["full/sfa"]["inference"]["same_graph_full"] == pytest.approx(9 / 2.5)
    assert c["full/sfa"]["n_frames"] == 4
    assert c["full/sfa"]["per_frame"]["inference"]["same_graph_full"] == pytest.approx(9 / 2.5 / 4)
    assert c["sfa/none"]["training"]["same_graph_rewired"] == pytest.approx(0.1 / 0.09)
    result["speed_targets"] = R.speed_targets(result)
    targets = {t["name"]: t for t in result["speed_targets"]}
    assert targets["faenet_sfa_over_schnet_throughput"]["value"] == pytest.approx(0.45)
    assert targets["faenet_sfa_over_schnet_throughput"]["passed"] is True
    assert targets["full_fa_cost_per_frame_over_sfa"]["passed"] is True  # 0.9 <= 1.0
    lines = R.target_lines(result)
    assert len(lines) == 2 and all("PASS" in line for line in lines)
    slow = _fake_result()
    slow["measurements"][2]["inference"]["samples_per_s"] = 2.0  # full FA: 9 / 2 / 4 = 1.125 per frame
    slow["ratios"], slow["symmetry_costs"] = R.throughput_ratios(slow), R.symmetry_costs(slow, N_FRAMES)
    failed = {t["name"]: t["passed"] for t in R.speed_targets(slow)}
    assert failed["full_fa_cost_per_frame_over_sfa"] is False


def test_paper_claims_are_computed_from_the_tables():
    claims = {c["name"]: c for c in R.paper_claims()}
    assert claims["faenet_vs_dimenet_pp_infer_is2re"]["claim"] == 21
    assert claims["faenet_vs_dimenet_pp_infer_is2re"]["table_ratio"] == pytest.approx(2469 / 115)
    assert claims["forcenet_vs_faenet_train_s2ef"]["table_ratio"] == pytest.approx(1476 / 75)
    assert claims["full_fa_vs_sfa_cost"]["table_ratio"] is None


def test_exclude_models_drops_a_model_at_every_or_one_hparam_set():
    params = _params(exclude_models=["gemnet_q", "profile:gemnet_t"], paper_hparams=True)
    jobs, protocols = bm.plan(params)
    by = {(j.hparams, j.model) for j in jobs}
    assert ("profile", "gemnet_q") not in by and ("paper", "gemnet_q") not in by
    assert ("profile", "gemnet_t") not in by and ("paper", "gemnet_t") in by
    assert ("profile", "schnet") in by



def test_gemnet_costs_on_the_same_molecule_batches():
    """GemNet-T vs GemNet-Q (smoke sizes) on the same QM7-X-like batches, and GemNet-T's per-layer variance with
    and without its fitted factors (held-out batches). Needs the fetched data/qm7x."""
    if not bm.GEMNET_DATA.exists():
        pytest.skip("data/qm7x is not fetched")
    raw = yaml.safe_load(PARAMS_PATH.read_text())
    raw["profile"] = "smoke"
    raw["profiles"]["smoke"]["benchmark"] = {**raw["profiles"]["smoke"]["benchmark"], "repeats": 1}
    params = parse_params(raw, check_models=False)
    out = bm.gemnet_costs(params)
    assert set(out["models"]) == {"gemnet_t", "gemnet_q"}
    assert all(m["samples_per_s"] > 0 and m["train_seconds_per_sample"] > 0 for m in out["models"].values())
    assert set(out["q_over_t"]) == {"inference", "epoch_time"}
    sc = out["scale_factors"]
    assert sc["held_out_graphs"] == 8 and set(sc["log2_var_ratio"]["fitted"]) == set(sc["factors"])
    # fitted on other batches, the factors still bring every scaled layer nearer var(out) = var(in)
    fit, raw_ = sc["log2_var_ratio"]["fitted"], sc["log2_var_ratio"]["unscaled"]
    assert sum(map(abs, fit.values())) < sum(map(abs, raw_.values()))
    raw["train_cells"] = {k: v for k, v in raw["train_cells"].items() if not k.startswith("gemnet")}
    assert bm.gemnet_costs(parse_params(raw, check_models=False)) is None


def test_measure_on_device_times_a_copy_on_the_cpu_path():
    """The GPU figures' helper on the CPU (the code path a CUDA machine runs, minus the synchronisation)."""
    model = _tiny_model()
    batches = [Batch.from_data_list(oc20_like_slabs(2, size=(2, 2, 2)))]
    res = measure_on_device(model, batches, "cpu", warmup=0, repeats=1, train_repeats=1)
    assert res["device"] == "cpu" and res["inference"]["samples_per_s"] > 0
    assert res["training"]["seconds_per_sample"] > 0 and res["inference"]["peak_memory_mib"] is None
    assert measure_on_device(model, batches, "cpu", train_repeats=1, inference=False)["inference"] is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present: the GPU figures are measured, not stated absent")
def test_report_states_gpu_columns_not_measured_without_cuda():
    info = B.gpu_info()
    assert info["measured"] is False and "CUDA is not available" in info["reason"]
    text = "\n".join(R.gpu_lines({"gpu": info, "measurements": []}))
    assert "GPU columns not measured on this machine" in text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: times one FAENet-SFA inference on the GPU")
def test_cuda_inference_timing():
    model = _tiny_model()
    batches = [Batch.from_data_list(oc20_like_slabs(4, size=(2, 2, 2)))]
    res = measure_on_device(model, batches, "cuda", warmup=1, repeats=2, train_repeats=1)
    assert res["inference"]["samples_per_s"] > 0 and res["inference"]["peak_memory_mib"] > 0
    assert res["training"]["seconds_per_sample"] > 0
    assert next(model.parameters()).device.type == "cpu"  # the caller's model stays on the CPU
    assert B.gpu_info()["measured"] is True


def test_committed_results_give_the_committed_headline_and_report():
    """A default-profile results file as the stage wrote it (fixture copy of results/benchmark.json, keys sorted
    on disk) gives, through the torch-free reporting code, the headline and report the stage wrote from memory."""
    result = json.loads((FIXTURES / "results.json").read_text())
    assert R.headline(result) == json.loads((FIXTURES / "headline.json").read_text())
    assert R.report_markdown(result) == (FIXTURES / "report.md").read_text()


def test_report_rows_do_not_depend_on_dict_order():
    """In memory the sections are in insertion order, on disk sorted: the report orders its rows itself."""
    result = json.loads((FIXTURES / "results.json").read_text())
    shuffled = copy.deepcopy(result)
    for key in ("ratios", "symmetry_costs", "scaling", "inputs"):
        shuffled[key] = dict(reversed(list(shuffled[key].items())))
    shuffled["gemnet"]["models"] = dict(reversed(list(shuffled["gemnet"]["models"].items())))
    assert R.report_markdown(shuffled) == R.report_markdown(result)


def test_timing_batches_and_interleaved_measurement():
    graphs = oc20_like_slabs(3, size=(2, 2, 2))
    batches, info = B.timing_batches(graphs, 2)
    assert [int(b.num_graphs) for b in batches] == [2, 1] and info["n_batches"] == 2 and info["n_graphs"] == 3
    assert info["atoms_per_graph"] == pytest.approx(sum(int(g.natoms) for g in graphs) / 3)
    res = B.measure_interleaved({"a": _tiny_model(), "b": _tiny_model()}, batches, warmup=0, repeats=1)
    assert set(res) == {"a", "b"}
    assert set(res["a"]) == {"samples_per_s", "samples_per_s_per_repeat", "cpu_utilisation"}
    with pytest.raises(ValueError, match="no graphs"):
        B.timing_batches([], 2)
