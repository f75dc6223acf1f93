"""Forward-pass throughput (samples/s), the unit of Table 6 (App. B.3) and of the paper's speed claims."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn


def _sync(model: nn.Module) -> None:
    param = next(model.parameters(), None)
    if param is not None and param.is_cuda:
        torch.cuda.synchronize(param.device)


def measure_forward_throughput(model: nn.Module, batches: Sequence, warmup: int = 2,
                               repeats: int = 5) -> dict:
    """Time ``repeats`` full passes of ``model`` over ``batches`` (already on the model's device).

    The model is put in eval mode (restored afterwards) and run under ``torch.inference_mode`` -- except
    when ``model.regress_forces == "from_energy"``, whose forces need autograd: then plain grad mode.
    ``warmup`` untimed passes come first. CUDA is synchronised around each timed pass.

    Returns ``samples_per_s`` (graphs per second of the median pass), ``samples_per_s_per_repeat``,
    ``times_s`` (wall seconds per pass), ``median_time_s``, ``cpu_times_s`` (process CPU seconds per pass,
    all threads: shows how much CPU a shared machine actually gave), ``num_samples``, ``num_batches``,
    ``num_atoms``, ``torch_num_threads``, ``grad_mode`` and ``device``.
    """
    if not batches:
        raise ValueError("batches is empty: give at least one batch to time")
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    num_samples = sum(int(b.num_graphs) for b in batches)
    num_atoms = sum(int(b.num_nodes) for b in batches)
    needs_grad = getattr(model, "regress_forces", "") == "from_energy"
    was_training = model.training
    model.eval()
    times: list[float] = []
    cpu_times: list[float] = []
    try:
        with contextlib.nullcontext() if needs_grad else torch.inference_mode():
            for _ in range(warmup):
                for batch in batches:
                    model(batch)
            for _ in range(repeats):
                _sync(model)
                start, cpu_start = time.perf_counter(), time.process_time()
                for batch in batches:
                    model(batch)
                _sync(model)
                times.append(time.perf_counter() - start)
                cpu_times.append(time.process_time() - cpu_start)
    finally:
        model.train(was_training)
    median = statistics.median(times)
    param = next(model.parameters(), None)
    return {
        "samples_per_s": num_samples / median,
        "samples_per_s_per_repeat": [num_samples / t for t in times],
        "times_s": times,
        "median_time_s": median,
        "cpu_times_s": cpu_times,
        "num_samples": num_samples,
        "num_batches": len(batches),
        "num_atoms": num_atoms,
        "torch_num_threads": torch.get_num_threads(),
        "grad_mode": "autograd" if needs_grad else "inference_mode",
        "device": str(param.device) if param is not None else "cpu",
    }
