"""Compare two benchmark results: identical key structure; every non-timing leaf equal."""
import json
import sys

TIMING = {"samples_per_s", "samples_per_s_per_repeat", "cpu_utilisation", "peak_memory_mib", "seconds_per_sample",
          "oc20_is2re", "embedded_is2re", "seconds", "load_average", "process_peak_rss_mib", "train_seconds_per_sample",
          "value", "passed", "exponent", "prefactor", "r2", "paper_protocol", "same_graph_full", "same_graph_rewired",
          "faenet_sfa_over_schnet", "faenet_literal_sfa_over_schnet", "fused_over_literal",
          "full_fa_cost_per_frame_over_sfa", "inference", "epoch_time", "schnet/none", "faenet/sfa", "faenet/full",
          "faenet-literal/sfa"}
a, b = (json.load(open(p)) for p in sys.argv[1:3])
n = {"compared": 0, "timing": 0}
def walk(x, y, path, timing=False):
    assert type(x) is type(y) or (isinstance(x, (int, float)) and isinstance(y, (int, float))) or timing, (path, x, y)
    if isinstance(x, dict):
        assert set(x) == set(y), (path, set(x) ^ set(y))
        for k in x:
            walk(x[k], y[k], path + [k], timing or k in TIMING)
    elif isinstance(x, list):
        assert len(x) == len(y), (path, len(x), len(y))
        for i, (u, v) in enumerate(zip(x, y, strict=True)):
            walk(u, v, path + [i], timing)
    elif timing:
        n["timing"] += 1
    else:
        assert x == y, (path, x, y)
        n["compared"] += 1
walk(a, b, [])
print("keys identical; equal non-timing leaves:", n["compared"], "; timing leaves skipped:", n["timing"])
