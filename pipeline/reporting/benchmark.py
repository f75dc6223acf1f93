"""The benchmark's results as numbers and text (torch-free): the speed ratios beside the paper's, the symmetry
costs, the speed targets, the headline metrics (``metrics/benchmark.json``) and ``reports/benchmark.md``.

Every function reads the ``results/benchmark.json`` structure that ``pipeline.benchmark`` writes (documented
there); ``headline`` reads it through ``pipeline.reporting.schemas.Benchmark``.

``results/benchmark.json``:

- ``profile``, ``seconds``, ``threads``, ``machine`` (cpu, cores, platform), ``packages`` (versions),
  ``torch`` (threads, interop threads, MKL / oneDNN / OpenMP flags), ``cpu_affinity``, ``load_average``
  (before, after), ``config`` (the benchmark section), ``hparam_sets`` (names measured), ``isolation``,
  ``workers`` (per process: kind, hparams, model, seconds, process_peak_rss_mib);
- ``inputs``: per graph set (``full``, ``rewired``, ``embedded_train``) ``atoms_per_graph``,
  ``edges_per_graph``, ``n_graphs``, ``description``;
- ``measurements``: list of ``{id, hparams, model, symmetry, task, graph, batch_size, n_graphs,
  atoms_per_graph, edges_per_graph, n_params, protocols (names using it), inference: {samples_per_s,
  samples_per_s_per_repeat, cpu_utilisation, peak_memory_mib} | null, training: {seconds_per_sample,
  samples_per_s, peak_memory_mib, epoch_seconds: {oc20_is2re, embedded_is2re}} | null}``;
- ``protocols``: ``{protocol: {hparams: {"model/symmetry": measurement id}}}``;
- ``ratios``: ``{hparams: {"faenet-sfa/<baseline>": {inference: {paper_protocol, same_graph_full,
  same_graph_rewired, paper}, epoch_time: {... same keys}}}}``: inference = throughput of FAENet-SFA over the
  baseline's (> 1: FAENet faster); epoch_time = the baseline's training seconds per sample over FAENet-SFA's
  (> 1: FAENet faster); ``paper`` = the same ratio from Table 9 (IS2RE ``infer`` / ``train_min``);
- ``s2ef``: ``{hparams: {"forcenet/faenet-sfa": {epoch_time: {paper_protocol, same_graph_full, paper}}}}``
  (``paper`` from Table 1 S2EF ``train_min``);
- ``symmetry_costs``: ``{hparams: {"full/sfa" | "sfa/none" | "se3-sfa/none" | "da/none" (training only):
  {inference: {same_graph_full, same_graph_rewired}, training: {...}, n_frames}}}``: cost = time per sample
  of the first method over the second's; for "full/sfa" also ``per_frame`` (cost / number of frames);
- ``speed_targets``: list of ``{name, regime, value, threshold, passed, what}`` (``passed`` null if not
  measured); ``regime`` "process" (the main measurements), "cold" or "steady" (``allocator_sensitivity``);
- ``allocator_sensitivity``: ``{n_graphs, batch_size, regimes: {cold|steady: {applied, samples_per_s: {model/
  symmetry: x}, faenet_sfa_over_schnet, faenet_literal_sfa_over_schnet, fused_over_literal,
  full_fa_cost_per_frame_over_sfa}}}`` or null;
- ``scaling``: ``{hparams: {model: {symmetry, points: [{size, atoms_per_graph, edges_per_graph,
  samples_per_s}], fit: {exponent, prefactor, r2}}}}``;
- ``paper_claims``: the text's speed claims (``pipeline/paper.yaml`` speed_claims) with the ratio of the
  table numbers they rest on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from faenet.tasks import OC20_IS2RE_TRAIN
from pipeline.reporting.schemas import Benchmark
from pipeline.reporting.table_writer import load_paper

TARGET_SFA_OVER_SCHNET = 0.4
TARGET_FULL_PER_FRAME = 1.0
#: The symmetry-cost pairs: name -> (method, the method it is compared with).
SYMMETRY_PAIRS = {"full/sfa": ("full", "sfa"), "se3-full/se3-sfa": ("se3-full", "se3-sfa"),
                  "sfa/none": ("sfa", "none"), "se3-sfa/none": ("se3-sfa", "none"), "da/none": ("da", "none")}
GEMNET_MODELS = ("gemnet_t", "gemnet_q")
INPUTS = ("full", "rewired", "embedded_train")


def in_order(d: Mapping[str, Any], order: Sequence[str]) -> list[tuple[str, Any]]:
    """``d``'s items, the keys of ``order`` first in that order, then the others as they come. The report reads
    the results in memory (insertion order) and from the file (keys sorted): both give the same rows."""
    first = [k for k in order if k in d]
    return [(k, d[k]) for k in first] + [(k, v) for k, v in d.items() if k not in first]


def _model_order(result: dict[str, Any]) -> list[str]:
    """Models as measured (the plan's order, that of ``train_cells``), then GemNet-T, GemNet-Q."""
    return list(dict.fromkeys([m["model"] for m in result["measurements"]] + list(GEMNET_MODELS)))


# ----------------------------------------------------------------------------------------------------------
# Ratios, costs, targets
# ----------------------------------------------------------------------------------------------------------

def _index(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["id"]: m for m in result["measurements"]}


def _lookup(result: dict[str, Any], protocol: str, hp: str, model: str, method: str) -> dict[str, Any] | None:
    mid = result["protocols"].get(protocol, {}).get(hp, {}).get(f"{model}/{method}")
    return _index(result).get(mid) if mid else None


def _inf(m: dict[str, Any] | None) -> float | None:
    return m["inference"]["samples_per_s"] if m and m.get("inference") else None


def _train(m: dict[str, Any] | None) -> float | None:
    return m["training"]["seconds_per_sample"] if m and m.get("training") else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _paper_ratio(table: str, num: str, den: str, quantity: str) -> float | None:
    rows = load_paper().get(table, {}).get("rows", {})
    a, b = rows.get(num, {}).get(quantity), rows.get(den, {}).get(quantity)
    return a / b if a is not None and b else None


PROTOCOL_KEYS = {"paper": "paper_protocol", "same_graph_full": "same_graph_full",
                 "same_graph_rewired": "same_graph_rewired"}


def throughput_ratios(result: dict[str, Any]) -> dict[str, Any]:
    """FAENet-SFA over every baseline: inference throughput and epoch time, each protocol, vs Table 9."""
    out: dict[str, Any] = {}
    for hp in result["hparam_sets"]:
        models = {m["model"] for m in result["measurements"] if m["hparams"] == hp}
        out[hp] = {}
        for base in sorted(models - {"faenet"}):
            inf, ep = {}, {}
            for proto, key in PROTOCOL_KEYS.items():
                fa, bl = _lookup(result, proto, hp, "faenet", "sfa"), _lookup(result, proto, hp, base, "none")
                inf[key] = _ratio(_inf(fa), _inf(bl))
                ep[key] = _ratio(_train(bl), _train(fa))
            inf["paper"] = _paper_ratio("table9", "faenet", base, "infer")
            ep["paper"] = _paper_ratio("table9", base, "faenet", "train_min")
            out[hp][f"faenet-sfa/{base}"] = {"inference": inf, "epoch_time": ep}
    return out



def s2ef_ratios(result: dict[str, Any]) -> dict[str, Any]:
    """ForceNet's S2EF training time per sample over FAENet-SFA's (> 1: FAENet faster), vs Table 1."""
    out: dict[str, Any] = {}
    s2 = [m for m in result["measurements"] if m["task"] == "s2ef"]
    for hp in result["hparam_sets"]:
        def get(model: str, graph: str, hp: str = hp) -> float | None:
            for m in s2:
                if (m["hparams"], m["model"], m["graph"]) == (hp, model, graph):
                    return _train(m)
            return None

        if not any(m["hparams"] == hp for m in s2):
            continue
        fn = get("forcenet", "full")
        out[hp] = {"forcenet/faenet-sfa": {"epoch_time": {
            "paper_protocol": _ratio(fn, get("faenet", "rewired")),
            "same_graph_full": _ratio(fn, get("faenet", "full")),
            "paper": _paper_ratio("table1_s2ef", "forcenet", "faenet", "train_min")}}}
    return out


def symmetry_costs(result: dict[str, Any], n_frames: Mapping[str, int]) -> dict[str, Any]:
    """Cost (time per sample) of one FAENet symmetry method over another, inference and training; the Full FA
    pairs also per frame, ``n_frames[method]`` (``full``, ``se3-full``) frames each (``faenet.frames.num_frames``
    of the benchmark's 2D frames)."""
    out: dict[str, Any] = {}
    for hp in result["hparam_sets"]:
        out[hp] = {}
        for name, (a, c) in SYMMETRY_PAIRS.items():
            inf, tr = {}, {}
            for proto in ("same_graph_full", "same_graph_rewired"):
                ma, mc = _lookup(result, proto, hp, "faenet", a), _lookup(result, proto, hp, "faenet", c)
                if ma is None or mc is None:
                    continue
                inf[proto] = _ratio(_inf(mc), _inf(ma))  # time ratio = inverse throughput ratio
                tr[proto] = _ratio(_train(ma), _train(mc))
            if not inf and not tr:
                continue
            entry: dict[str, Any] = {"inference": inf, "training": tr}
            if name.endswith("full/sfa") or name.endswith("full/se3-sfa"):
                n_f = n_frames[a]
                entry["n_frames"] = n_f
                entry["per_frame"] = {"inference": {k: v / n_f if v is not None else None for k, v in inf.items()},
                                      "training": {k: v / n_f if v is not None else None for k, v in tr.items()}}
            out[hp][name] = entry
    return out


def speed_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The developer guide's two targets at the paper's hyperparameters, same-graph protocol, full graphs: from
    the main measurements (regime ``main``, under ``malloc_regime``) and, when measured, from the
    allocator-sensitivity block (regimes ``cold`` and ``steady``)."""
    hp = "paper"
    sfa_schnet = (result["ratios"].get(hp, {}).get("faenet-sfa/schnet", {}).get("inference", {})
                  .get("same_graph_full"))
    full = result["symmetry_costs"].get(hp, {}).get("full/sfa", {})
    per_frame = full.get("per_frame", {}).get("inference", {}).get("same_graph_full")
    values = {"main": (sfa_schnet, per_frame)}
    for regime, r in ((result.get("allocator_sensitivity") or {}).get("regimes") or {}).items():
        values[regime] = (r["faenet_sfa_over_schnet"], r["full_fa_cost_per_frame_over_sfa"])

    def target(name: str, regime: str, value: float | None, threshold: float, higher: bool,
               what: str) -> dict[str, Any]:
        passed = None if value is None else (value >= threshold if higher else value <= threshold)
        return {"name": name, "regime": regime, "value": value, "threshold": threshold, "passed": passed,
                "what": what}

    out = []
    for regime, (ratio, cost) in values.items():
        out += [target("faenet_sfa_over_schnet_throughput", regime, ratio, TARGET_SFA_OVER_SCHNET, True,
                       "FAENet-SFA forward throughput (Table 7 IS2RE) / SchNet's (OCP IS2RE), identical full-graph "
                       "batches"),
                target("full_fa_cost_per_frame_over_sfa", regime, cost, TARGET_FULL_PER_FRAME, False,
                       f"Full FA forward time / SFA's / {full.get('n_frames', 4)} frames (Table 7 IS2RE, full graphs)")]
    return out


REGIMES = {"main": "main measurements", "cold": "allocator cold: page faults on every large allocation",
           "steady": "allocator steady: freed memory reused"}


def target_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    for t in result["speed_targets"]:
        where = REGIMES.get(t.get("regime", "main"), t.get("regime"))
        if t.get("regime", "main") == "main":
            where += f", allocator {result.get('config', {}).get('malloc_regime', 'default')}"
        if t["passed"] is None:
            lines.append(f"SPEED TARGET {t['name']} [{where}]: not measured (needs paper_hparams) -- {t['what']}")
        else:
            op = ">=" if t["name"].startswith("faenet_sfa") else "<="
            lines.append(f"SPEED TARGET {t['name']} [{where}]: {t['value']:.3f} (target {op} {t['threshold']}) "
                         f"{'PASS' if t['passed'] else 'FAIL'} -- {t['what']}")
    return lines


def paper_claims() -> list[dict[str, Any]]:
    """The text's speed claims with the ratio of the table numbers behind them (``paper.yaml`` speed_claims)."""
    out = []
    for name, c in load_paper().get("speed_claims", {}).get("rows", {}).items():
        ratio = (_paper_ratio(c["table"], c["numerator"], c["denominator"], c["quantity"])
                 if c.get("table") else None)
        out.append({"name": name, "claim": c.get("claim"), "table_ratio": ratio, "text": c.get("text")})
    return out


# ----------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------

def _f(x: float | None, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}"


def _duration(s: float | None) -> str:
    if s is None:
        return "–"
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.1f} s"


#: Protocols of the headline's ratios: the paper's (each model on its own graphs) and identical full graphs.
HEADLINE_PROTOCOLS = ("paper_protocol", "same_graph_full")


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The stage's DVC metric from its full ``result``, at the hyperparameters the claims read (the paper's if
    measured, else the profile's): forward throughput (samples/s) of every model/symmetry under the paper
    protocol; the FAENet-SFA / baseline inference and epoch-time ratios and the S2EF ForceNet / FAENet-SFA
    epoch-time ratio under ``HEADLINE_PROTOCOLS``; the Full FA cost per frame over SFA and the SFA cost over
    no symmetry (forward, full graphs); the value of every speed target (``<name>@<regime>``)."""
    b = Benchmark.model_validate(result)
    hp = "paper" if "paper" in b.hparam_sets else "profile"
    by_id = {m.id: m for m in b.measurements}
    throughput = {key: by_id[mid].inference.samples_per_s
                  for key, mid in sorted(b.protocols.get("paper", {}).get(hp, {}).items())
                  if by_id[mid].inference is not None}  # None for training-only methods (DA)
    ratios = {pair: {kind: {p: r[kind].get(p) for p in HEADLINE_PROTOCOLS} for kind in ("inference", "epoch_time")}
              for pair, r in sorted(b.ratios.get(hp, {}).items())}
    s2ef = {pair: {p: r["epoch_time"].get(p) for p in HEADLINE_PROTOCOLS}
            for pair, r in sorted(b.s2ef.get(hp, {}).items())}
    costs = b.symmetry_costs.get(hp, {})
    full_sfa = costs.get("full/sfa", {})
    symmetry = {"full/sfa_per_frame": full_sfa.get("per_frame", {}).get("inference", {}).get("same_graph_full"),
                "sfa/none": costs.get("sfa/none", {}).get("inference", {}).get("same_graph_full")}
    targets = {f"{t.name}@{t.regime}": t.value for t in b.speed_targets}
    return {"profile": b.profile, "hparams": hp, "samples_per_s": throughput, "ratios": ratios,
            "s2ef_epoch_time": s2ef, "symmetry_cost": symmetry, "speed_targets": targets}


def gpu_lines(result: dict[str, Any]) -> list[str]:
    """The report's GPU section: one row per measurement, or the sentence saying they were not measured."""
    gpu = result.get("gpu") or {"measured": False, "reason": "no GPU block in the results"}
    lines = ["", "## GPU figures (CUDA-synchronised)", ""]
    if not gpu["measured"]:
        return lines + [f"GPU columns not measured on this machine: {gpu['reason']}. Where CUDA is present the "
                        "stage times every row below on the GPU as well (`torch.cuda.synchronize()` around each "
                        "timed pass, float32)."]
    lines += [f"Device {gpu['device']}, CUDA {gpu.get('cuda')}; same models, batches, warm-up and repeats as the CPU "
              "rows; `torch.cuda.synchronize()` before and after each timed pass; peak = CUDA memory allocated.", "",
              "| hparams | task | model | symmetry | graph | batch | GPU infer samples/s | GPU infer peak MiB | "
              "GPU train s/sample | GPU train peak MiB | GPU epoch OC20 IS2RE |", "|" + "---|" * 11]
    for r in result["measurements"]:
        g = r.get("gpu") or {}
        inf, tr = g.get("inference") or {}, g.get("training") or {}
        lines.append(f"| {r['hparams']} | {r['task']} | {r['model']} | {r['symmetry']} | {r['graph']} | "
                     f"{r['batch_size']} | {_f(inf.get('samples_per_s'), 1)} | {_f(inf.get('peak_memory_mib'), 0)} | "
                     f"{_f(tr.get('seconds_per_sample'), 5)} | {_f(tr.get('peak_memory_mib'), 0)} | "
                     f"{_duration(tr.get('epoch_seconds_oc20_is2re'))} |")
    return lines


def report_markdown(result: dict[str, Any]) -> str:
    """``reports/benchmark.md``: machine, speed targets, GemNet, allocator sensitivity, inputs, ratios, symmetry
    costs, every measurement (CPU and GPU), scaling, the paper's speed claims, the protocol."""
    m, t, cfg = result["machine"], result["torch"], result["config"]
    hps, models = result["hparam_sets"], _model_order(result)
    pk = result["packages"]
    lines = ["# Benchmark: throughput, training time, memory (CPU; GPU where CUDA is present)", "",
             f"{m['cpu']}, {result['threads']} threads (affinity {len(result['cpu_affinity'])} CPUs, {m['cores']} "
             f"cores); torch {t['version']} ({t['cpu_capability']}, MKL {t['mkl']}, oneDNN {t['mkldnn']}), "
             f"torch-geometric {pk.get('torch-geometric')}, numpy {pk.get('numpy')}, Python {t['python']}. "
             f"Load average before/after: {_f(result['load_average']['before'][0])} / "
             f"{_f(result['load_average']['after'][0])}. Profile `{result['profile']}`, {result['seconds']:.0f} s.", ""]
    for line in target_lines(result):
        lines.append(f"- **{line}**")
    skipped = result["config"].get("exclude_models") or []
    if skipped:
        lines.append(f"- Not benchmarked on the slabs (`benchmark.exclude_models`): {', '.join(skipped)}.")
    gem = result.get("gemnet")
    if gem:
        lines += ["", "## GemNet-T vs GemNet-Q (same QM7-X-like batches)", "", f"{gem['data']}, {gem['hparams']} "
                  "hyperparameters, scaling factors fitted on these batches.", "",
                  "| model | params | infer [samples/s] | train [ms/sample] |", "|---|---|---|---|"]
        for name, g in in_order(gem["models"], GEMNET_MODELS):
            lines.append(f"| {name} | {g['n_params']} | {g['samples_per_s']:.1f} | "
                         f"{1000 * g['train_seconds_per_sample']:.2f} |")
        if "q_over_t" in gem:
            lines += ["", f"GemNet-Q / GemNet-T time: inference {gem['q_over_t']['inference']:.2f}x, training "
                      f"{gem['q_over_t']['epoch_time']:.2f}x."]
        sc = gem.get("scale_factors")
        if sc:
            fit, raw = sc["log2_var_ratio"]["fitted"], sc["log2_var_ratio"]["unscaled"]
            lines += ["", f"Scaling factors ({sc['model']}, {sc['held_out_graphs']} held-out graphs): "
                      "|log2 var(out)/var(in)| per scaled layer, mean (max): fitted "
                      f"{sum(abs(v) for v in fit.values()) / len(fit):.3f} ({max(abs(v) for v in fit.values()):.3f}), "
                      f"all factors 1 {sum(abs(v) for v in raw.values()) / len(raw):.3f} "
                      f"({max(abs(v) for v in raw.values()):.3f})."]
    alloc = result.get("allocator_sensitivity")
    if alloc:
        lines += ["", "## Allocator sensitivity of the speed-target pair", "",
                  f"Paper hparams, the first {alloc['n_graphs']} full-graph slabs, models interleaved in one process "
                  "(faenet-literal = FAENet-SFA with the literal Eq. (8) concatenation, the official package's "
                  "per-edge product). Samples/s:", "",
                  "| regime | SchNet | FAENet-SFA | FAENet Full FA | FAENet-SFA literal | SFA / SchNet | "
                  "literal / SchNet | fused / literal | Full FA per frame / SFA |", "|" + "---|" * 9]
        for regime, r in in_order(alloc["regimes"], list(REGIMES)):
            tp = r["samples_per_s"]
            lines.append(f"| {REGIMES[regime]} | {tp['schnet/none']:.1f} | {tp['faenet/sfa']:.1f} | "
                         f"{tp['faenet/full']:.2f} | {tp['faenet-literal/sfa']:.2f} | "
                         f"{r['faenet_sfa_over_schnet']:.3f} | "
                         f"{r['faenet_literal_sfa_over_schnet']:.3f} | {r['fused_over_literal']:.2f} | "
                         f"{r['full_fa_cost_per_frame_over_sfa']:.3f} |")
        lines += ["", "SchNet's per-edge tensors are large and its arithmetic light: whether freed memory is reused "
                  "(steady) or every large block is mapped afresh with page faults (cold) changes its speed about "
                  "twofold, FAENet's (GEMM-bound) little. glibc's default policy lands in between, depending on "
                  "what ran before in the process; the main measurements give each model a fresh process."]
    lines += ["", "## Inputs", "", "| graphs | n | atoms/graph | edges/graph | what |", "|---|---|---|---|---|"]
    for name, info in in_order(result["inputs"], INPUTS):
        if info:
            lines.append(f"| {name} | {info['n_graphs']} | {info['atoms_per_graph']:.1f} | "
                         f"{info['edges_per_graph']:.0f} | {info['description']} |")
    lines += ["", "## Ratios: FAENet-SFA vs baselines", "",
              "Inference: FAENet-SFA throughput / baseline throughput. Epoch time: baseline training time per sample "
              "/ FAENet-SFA's. > 1 = FAENet faster. Paper: Table 9 (IS2RE, GPU).", "",
              "| hparams | ratio | quantity | paper protocol | same graph, full | same graph, rewired | paper |",
              "|---|---|---|---|---|---|---|"]
    for hp, per in in_order(result["ratios"], hps):
        for name, v in per.items():
            for q in ("inference", "epoch_time"):
                r = v[q]
                lines.append(f"| {hp} | {name} | {q} | {_f(r['paper_protocol'])} | {_f(r['same_graph_full'])} | "
                             f"{_f(r['same_graph_rewired'])} | {_f(r['paper'])} |")
    for hp, per in in_order(result["s2ef"], hps):
        r = per["forcenet/faenet-sfa"]["epoch_time"]
        lines.append(f"| {hp} | forcenet/faenet-sfa (S2EF, forces) | epoch_time | {_f(r['paper_protocol'])} | "
                     f"{_f(r['same_graph_full'])} | – | {_f(r['paper'])} |")
    lines += ["", "## FAENet symmetry costs (time per sample, first method / second)", "",
              "| hparams | costs | inference, full | inference, rewired | training, full | training, rewired | "
              "per frame (inference, full) |", "|---|---|---|---|---|---|---|"]
    for hp, per in in_order(result["symmetry_costs"], hps):
        for name, v in in_order(per, list(SYMMETRY_PAIRS)):
            pf = v.get("per_frame", {}).get("inference", {}).get("same_graph_full")
            lines.append(f"| {hp} | {name} | {_f(v['inference'].get('same_graph_full'))} | "
                         f"{_f(v['inference'].get('same_graph_rewired'))} | {_f(v['training'].get('same_graph_full'))}"
                         f" | {_f(v['training'].get('same_graph_rewired'))} | {_f(pf)} |")
    lines += ["", "## Every measurement", "",
              "| hparams | task | model | symmetry | graph | protocols | batch | graphs | atoms/graph | edges/graph | "
              "infer samples/s | infer peak MiB | train s/sample | train peak MiB | epoch OC20 IS2RE | epoch embedded "
              "| params |", "|" + "---|" * 17]
    for r in result["measurements"]:
        inf, tr = r["inference"] or {}, r["training"] or {}
        ep = tr.get("epoch_seconds", {})
        lines.append(f"| {r['hparams']} | {r['task']} | {r['model']} | {r['symmetry']} | {r['graph']} | "
                     f"{', '.join(r['protocols']) or '–'} | {r['batch_size']} | {r['n_graphs']} | "
                     f"{r['atoms_per_graph']:.1f} | {r['edges_per_graph']:.0f} | {_f(inf.get('samples_per_s'), 1)} | "
                     f"{_f(inf.get('peak_memory_mib'), 0)} | {_f(tr.get('seconds_per_sample'), 4)} | "
                     f"{_f(tr.get('peak_memory_mib'), 0)} | {_duration(ep.get('oc20_is2re'))} | "
                     f"{_duration(ep.get('embedded_is2re'))} | {r['n_params']:,} |")
    lines += gpu_lines(result)
    lines += ["", "## Scaling: throughput against atoms per graph (full graphs)", ""]
    for hp, per in in_order(result["scaling"], hps):
        sizes = [p["size"] for p in next(iter(per.values()))["points"]] if per else []
        lines += [f"`{hp}` hparams; samples/s per slab size n (n x n x 4 + adsorbate); exponent = slope of "
                  "log(samples/s) vs log(atoms/graph).", "",
                  "| model | " + " | ".join(f"n={n}" for n in sizes) + " | exponent | r² |",
                  "|" + "---|" * (len(sizes) + 3)]
        for model, v in in_order(per, models):
            pts = " | ".join(f"{p['samples_per_s']:.1f} ({p['atoms_per_graph']:.0f} at.)" for p in v["points"])
            lines.append(f"| {model}-{v['symmetry']} | {pts} | {v['fit']['exponent']:.2f} | {v['fit']['r2']:.3f} |")
        lines.append("")
    lines += ["## The paper's speed claims and their tables", "", "| claim | text says | table ratio | source |",
              "|---|---|---|---|"]
    for c in result["paper_claims"]:
        lines.append(f"| {c['name']} | {_f(c['claim'], 0) if c['claim'] is not None else '–'} | "
                     f"{_f(c['table_ratio'])} | {c['text']} |")
    lines += ["", "## Protocol", "",
              "- Paper protocol: each model with the authors' graph preprocessing (FAENet on graphs without "
              "sub-surface atoms, `remove-tag-0`, as every FAENet config of the fork; baselines on full graphs) at "
              f"the authors' IS2RE eval batch sizes {dict(in_order(cfg['paper_batch_sizes'], models))} capped at "
              f"{result['config']['max_batch_size']}. Same-graph protocol: every model on identical batches of "
              f"{result['config']['batch_size']}, once full and once rewired.",
              "- Inference: forward only, eval mode, `torch.inference_mode`, warmed up "
              f"({result['config']['warmup']} pass), median of {result['config']['repeats']} passes. DA is not timed "
              "at inference (its eval path is the model unchanged: the `none` row). Models with a `max_graphs` cap "
              f"({dict(in_order(cfg['max_graphs'], models))}) are timed on the first graphs of the same batches only.",
              f"- Training: forward + loss + backward + clip + AdamW on the first {result['config']['train_graphs']} "
              f"graphs, 1 warm-up pass, median of {result['config']['train_repeats']}; epoch = seconds per sample x "
              f"{OC20_IS2RE_TRAIN:,} (OC20 IS2RE train, from the OC20-sized slabs) or x the embedded train split size "
              "(from a separate measurement on its own first graphs, same-graph full rows).",
              "- Peak memory: extra resident memory (RSS high-water mark, reset per measurement) during the first "
              "warm-up pass, MiB; parameters and inputs resident before are not counted.",
              "- The paper timed one RTX8000 GPU; compare ratios, not absolute numbers. Its FAENet throughput ratios "
              "compare FAENet on rewired graphs with baselines on full graphs (the paper protocol)."]
    return "\n".join(lines) + "\n"


def write_report(result: dict[str, Any], path: Path) -> None:
    """Write ``report_markdown(result)`` to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report_markdown(result))
