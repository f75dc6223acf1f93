"""Speed and memory measurements of models of the project interface (library code, no DVC/MLflow).

- ``measure_forward_throughput``: forward-pass throughput (samples/s), the unit of Table 6 (App. B.3) and of
  the paper's speed claims;
- ``measure_training_step``: time of training steps (forward, loss, backward, optimiser step);
- ``measure_on_device``: both on another device (the benchmark's GPU figures), CUDA-synchronised;
- ``peak_rss_increase``: the extra resident memory one call needs (Linux RSS high-water mark, reset per call);
- ``oc20_like_slabs``: OC20-sized slab + adsorbate records to time on; ``fit_power_law`` for scaling curves.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import gc
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn


def _sync(model: nn.Module) -> None:
    param = next(model.parameters(), None)
    if param is not None and param.is_cuda:
        torch.cuda.synchronize(param.device)


def _grad_context(model: nn.Module):
    """``torch.inference_mode`` unless the model's forces are ``-dE/dpos`` (then plain grad mode)."""
    needs_grad = getattr(model, "regress_forces", "") == "from_energy"
    return contextlib.nullcontext() if needs_grad else torch.inference_mode()


def measure_forward_throughput(model: nn.Module, batches: Sequence, warmup: int = 2, repeats: int = 5,
                               memory: bool = False) -> dict:
    """Time ``repeats`` full passes of ``model`` over ``batches`` (already on the model's device).

    The model is put in eval mode (restored afterwards) and run under ``torch.inference_mode`` -- except
    when ``model.regress_forces == "from_energy"``, whose forces need autograd: then plain grad mode.
    ``warmup`` untimed passes come first. CUDA is synchronised around each timed pass. With ``memory``, the
    first warm-up pass (an extra untimed pass if ``warmup`` is 0) runs under ``peak_rss_increase``.

    Returns ``samples_per_s`` (graphs per second of the median pass), ``samples_per_s_per_repeat``,
    ``times_s`` (wall seconds per pass), ``median_time_s``, ``cpu_times_s`` (process CPU seconds per pass,
    all threads: shows how much CPU a shared machine actually gave), ``cpu_utilisation`` (median CPU / wall /
    threads; well below 1 means the machine was shared or the model waits), ``num_samples``,
    ``num_batches``, ``num_atoms``, ``torch_num_threads``, ``grad_mode``, ``device`` and with ``memory``
    ``peak_memory`` (``peak_rss_increase``'s dict).
    """
    return measure_forward_throughput_interleaved({"model": model}, batches, warmup, repeats, memory)["model"]


def measure_forward_throughput_interleaved(models: Mapping[str, nn.Module], batches: Sequence, warmup: int = 2,
                                           repeats: int = 5, memory: bool = False) -> dict[str, dict]:
    """``measure_forward_throughput`` of several models on the same ``batches``, interleaved: after every
    model's warm-up, repeat ``r`` times model 1, model 2, ... in turn, so a change of machine load during
    the measurement affects every model alike. Returns ``{name: result}``."""
    if not batches:
        raise ValueError("batches is empty: give at least one batch to time")
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    num_samples = sum(int(b.num_graphs) for b in batches)
    num_atoms = sum(int(b.num_nodes) for b in batches)
    was_training = {name: m.training for name, m in models.items()}

    def one_pass(model: nn.Module) -> None:
        with _grad_context(model):
            for batch in batches:
                model(batch)

    times: dict[str, list[float]] = {name: [] for name in models}
    cpu_times: dict[str, list[float]] = {name: [] for name in models}
    peaks: dict[str, dict] = {}
    try:
        for name, model in models.items():
            model.eval()
            for k in range(max(warmup, 1 if memory else 0)):
                if memory and k == 0:
                    peaks[name] = peak_rss_increase(lambda model=model: one_pass(model))
                else:
                    one_pass(model)
        for _ in range(repeats):
            for name, model in models.items():
                _sync(model)
                start, cpu_start = time.perf_counter(), time.process_time()
                one_pass(model)
                _sync(model)
                times[name].append(time.perf_counter() - start)
                cpu_times[name].append(time.process_time() - cpu_start)
    finally:
        for name, model in models.items():
            model.train(was_training[name])
    out = {}
    threads = torch.get_num_threads()
    for name, model in models.items():
        median = statistics.median(times[name])
        param = next(model.parameters(), None)
        out[name] = {
            "samples_per_s": num_samples / median,
            "samples_per_s_per_repeat": [num_samples / t for t in times[name]],
            "times_s": times[name],
            "median_time_s": median,
            "cpu_times_s": cpu_times[name],
            "cpu_utilisation": statistics.median(cpu_times[name]) / median / threads,
            "num_samples": num_samples,
            "num_batches": len(batches),
            "num_atoms": num_atoms,
            "torch_num_threads": threads,
            "grad_mode": "autograd" if getattr(model, "regress_forces", "") == "from_energy" else "inference_mode",
            "device": str(param.device) if param is not None else "cpu",
        }
        if memory:
            out[name]["peak_memory"] = peaks[name]
    return out


# ----------------------------------------------------------------------------------------------------------
# Benchmark inputs
# ----------------------------------------------------------------------------------------------------------

_METALS = ("Cu", "Pt", "Pd", "Ag", "Au", "Ni")
_ADSORBATES = (("O", None), ("H", None), ("CO", 1), ("OH", 0), ("N", None))


def oc20_like_slabs(n: int, size: tuple[int, int, int] = (4, 4, 4), seed: int = 0, cutoff: float = 6.0,
                    max_neighbors: int = 50, forces: bool = False) -> list:
    """``n`` OC20-like slabs with one adsorbate each, as project records, for timing models.

    Graph ``k``: fcc(111) (even k) or fcc(100) (odd k) of ``_METALS[k % 6]`` (ASE's lattice constants) of
    ``size = (nx, ny, layers)`` atoms, 8 Å vacuum, an adsorbate of ``_ADSORBATES[k % 5]`` 1.8 Å above a
    seeded random xy position; radius graph of ``cutoff`` Å with at most ``max_neighbors`` per atom (OC20's
    6 Å / 50), periodic in x, y. Tags follow the embedded dataset (``faenet.data.catalysis``): the bottom
    ``ceil(layers / 2)`` layers are sub-surface (0, fixed), the others surface (1), the adsorbate 2.
    ``forces=True`` adds seeded random ``force`` targets (S2EF-style training steps). Deterministic in
    ``(n, size, seed)``.
    """
    import numpy as np
    from ase.build import add_adsorbate, fcc100, fcc111, molecule
    from torch_geometric.data import Data

    from faenet.graph import radius_graph

    if n < 1 or min(size) < 1:
        raise ValueError(f"need n >= 1 and positive slab sizes, got n={n}, size={size}")
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    builders = (fcc111, fcc100)
    out = []
    for k in range(n):
        slab = builders[k % 2](_METALS[k % len(_METALS)], tuple(size), vacuum=8.0)
        layer = slab.get_tags()  # ASE: 1 = top layer ... layers = bottom
        tags = np.where(layer <= size[2] - math.ceil(size[2] / 2), 1, 0)
        name, idx = _ADSORBATES[k % len(_ADSORBATES)]
        cell_xy = slab.cell.array[:2, :2]
        xy = rng.uniform(0, 1, 2) @ cell_xy
        add_adsorbate(slab, molecule(name) if len(name) > 1 else name, 1.8, position=tuple(xy),
                      mol_index=idx or 0)
        tags = np.concatenate([tags, np.full(len(slab) - len(tags), 2)])
        pos = torch.tensor(slab.positions, dtype=torch.float32)
        cell = torch.tensor(slab.cell.array, dtype=torch.float32)
        ei, off = radius_graph(pos, cutoff, max_neighbors, cell, (True, True, False))
        na = len(slab)
        rec = Data(pos=pos, atomic_numbers=torch.tensor(slab.numbers), natoms=na, tags=torch.tensor(tags),
                   fixed=torch.tensor((tags == 0).astype(np.int64)), cell=cell[None],
                   pbc=torch.tensor([[True, True, False]]), edge_index=ei, cell_offsets=off, y=0.0)
        if forces:
            rec.force = torch.randn(na, 3, generator=gen)
        out.append(rec)
    return out


# ----------------------------------------------------------------------------------------------------------
# Training step, peak memory, scaling fit
# ----------------------------------------------------------------------------------------------------------

def measure_training_step(model: nn.Module, batches: Sequence, needs_forces: bool = False, warmup: int = 1,
                          repeats: int = 3, energy_grad_coef: float = 0.0, seed: int = 0,
                          memory: bool = False) -> dict:
    """Time training steps (forward, loss, backward, gradient clipping, AdamW step) over ``batches``.

    Runs on a deep copy of ``model`` in training mode (the caller's model and its parameters are untouched),
    with ``faenet.training.compute_loss`` (energy MAE, plus force MAE if ``needs_forces``, plus the Eq. (9)
    energy-gradient term if ``energy_grad_coef`` > 0) on unnormalised targets, lr 1e-4, clip 10, as
    ``faenet.training.train``. ``warmup`` untimed passes over ``batches``, then ``repeats`` timed ones; with
    ``memory`` the first warm-up pass (an extra one if ``warmup`` is 0) runs under ``peak_rss_increase``.

    Returns ``seconds_per_sample`` (median pass / samples), ``samples_per_s``, ``times_s``, ``cpu_times_s``,
    ``median_time_s``, ``num_samples``, ``num_batches`` (and ``peak_memory`` with ``memory``).
    """
    from faenet.training import Normalizer, TrainSettings, compute_loss
    from faenet.warmup import prepare_model

    if not batches:
        raise ValueError("batches is empty: give at least one batch to time")
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    settings = TrainSettings(force_coef=1.0 if needs_forces else 0.0, energy_grad_coef=energy_grad_coef,
                             lr=1e-4, grad_clip=10.0, seed=seed)
    norm = Normalizer()
    net = copy.deepcopy(model)
    prepare_model(net, list(batches))  # a warm-up hook (GemNet's scaling factors) fits on these batches, untimed
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=settings.lr)
    num_samples = sum(int(b.num_graphs) for b in batches)

    def one_pass() -> None:
        for batch in batches:
            out = net(batch)
            loss, _ = compute_loss(out, batch, settings, norm, needs_forces)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), settings.grad_clip)
            opt.step()

    times, cpu_times = [], []
    peak = None
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for k in range(max(warmup, 1 if memory else 0)):
            if memory and k == 0:
                peak = peak_rss_increase(one_pass)
            else:
                one_pass()
        for _ in range(repeats):
            _sync(net)
            start, cpu_start = time.perf_counter(), time.process_time()
            one_pass()
            _sync(net)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    median = statistics.median(times)
    out = {"seconds_per_sample": median / num_samples, "samples_per_s": num_samples / median,
           "times_s": times, "cpu_times_s": cpu_times, "median_time_s": median, "num_samples": num_samples,
           "num_batches": len(batches)}
    if memory:
        out["peak_memory"] = peak
    return out


def measure_on_device(model: nn.Module, batches: Sequence, device: torch.device | str, *,
                      needs_forces: bool = False, energy_grad_coef: float = 0.0, warmup: int = 1,
                      repeats: int = 3, train_repeats: int = 2, inference: bool = True) -> dict:
    """Inference throughput and training-step time of a copy of ``model`` on ``device`` (e.g. ``cuda``).

    The copy and the batches are moved to ``device`` before any timing (the caller's model stays where it
    is); ``measure_forward_throughput`` / ``measure_training_step`` call ``torch.cuda.synchronize`` before
    and after every timed pass, so the kernels queued by a pass are inside its time. Float32, no autocast:
    the same arithmetic as the CPU figures. ``inference=False`` times training only (S2EF rows).

    Returns ``device`` (its name), ``inference`` (``samples_per_s``, ``samples_per_s_per_repeat``,
    ``peak_memory_mib``: CUDA peak allocated during the passes) or None, and ``training``
    (``seconds_per_sample``, ``samples_per_s``, ``peak_memory_mib``).
    """
    device = torch.device(device)
    net = copy.deepcopy(model).to(device)
    moved = [b.to(device) for b in batches]
    cuda = device.type == "cuda"

    def peak_mib() -> float | None:
        return torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None

    out: dict = {"device": torch.cuda.get_device_name(device) if cuda else str(device), "inference": None}
    if inference:
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        r = measure_forward_throughput(net, moved, warmup=warmup, repeats=repeats)
        out["inference"] = {"samples_per_s": r["samples_per_s"],
                            "samples_per_s_per_repeat": r["samples_per_s_per_repeat"],
                            "peak_memory_mib": peak_mib()}
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    tr = measure_training_step(net, moved, needs_forces=needs_forces, warmup=1, repeats=train_repeats,
                               energy_grad_coef=energy_grad_coef)
    out["training"] = {"seconds_per_sample": tr["seconds_per_sample"], "samples_per_s": tr["samples_per_s"],
                       "peak_memory_mib": peak_mib()}
    return out


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def peak_rss_increase(fn: Callable[[], object]) -> dict:
    """Run ``fn()`` and return the peak extra resident memory it needed, in MiB (Linux).

    Method: collect garbage (cheap after ``gc.freeze()``, which the stages call once their inputs are built)
    and hand freed heap pages back to the OS (``malloc_trim``), reset the process's
    RSS high-water mark (``/proc/self/clear_refs`` = 5), run ``fn``, read ``VmHWM``. ``peak_mib`` =
    high-water mark minus the resident size at the reset: activations and workspaces of that call, not what
    was resident before (parameters, inputs). Isolated per call by the reset, in one process. Returns
    ``{"peak_mib": None, "reason": ...}`` where the kernel interface is missing.
    """
    try:
        gc.collect()
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
        base = _status_kib("VmRSS")
    except OSError as err:
        fn()
        return {"peak_mib": None, "reason": f"no RSS high-water reset on this system ({err})"}
    fn()
    peak = _status_kib("VmHWM")
    return {"peak_mib": (peak - base) / 1024, "rss_before_mib": base / 1024, "rss_peak_mib": peak / 1024}


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> dict:
    """Least-squares fit of ``log y = a log x + b``: ``{"exponent": a, "prefactor": e^b, "r2"}``."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"need at least two (x, y) pairs of equal length, got {len(x)} and {len(y)}")
    if min(x) <= 0 or min(y) <= 0:
        raise ValueError("a power law needs positive x and y")
    lx = [math.log(v) for v in x]
    ly = [math.log(v) for v in y]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    if sxx == 0:
        raise ValueError("x values are all equal: the exponent is undefined")
    slope = sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sxx
    intercept = my - slope * mx
    ss_res = sum((b - (slope * a + intercept)) ** 2 for a, b in zip(lx, ly, strict=True))
    ss_tot = sum((b - my) ** 2 for b in ly)
    return {"exponent": slope, "prefactor": math.exp(intercept), "r2": 1 - ss_res / ss_tot if ss_tot else 1.0}


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_GLIBC_INITIAL_THRESHOLD = 128 * 1024
_GLIBC_MAX_MMAP_THRESHOLD = 32 * 1024 * 1024  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit


def set_malloc_regime(regime: str) -> bool:
    """Fix glibc's allocator policy for the rest of the process (Linux/glibc; returns False elsewhere).

    By default glibc adapts its thresholds as blocks are freed, so the cost of large allocations (mmap and
    page faults, or reuse of freed heap memory) depends on everything allocated before: a model can run twice
    as fast after another model ran. ``cold``: the initial thresholds made static (blocks >= 128 KiB are
    mmapped and handed back when freed; every large allocation pays its page faults); ``steady``: mmap only
    above glibc's maximum threshold (32 MiB) and never trim (freed memory is reused, as a caching allocator
    or a long-running process does). Freed memory is handed back first (``malloc_trim``).
    """
    if regime not in ("cold", "steady"):
        raise ValueError(f"regime must be 'cold' or 'steady', got {regime!r}")
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    libc.malloc_trim(0)
    mmap, trim = ((_GLIBC_INITIAL_THRESHOLD, _GLIBC_INITIAL_THRESHOLD) if regime == "cold"
                  else (_GLIBC_MAX_MMAP_THRESHOLD, 2**31 - 1))
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, trim))
