"""Where a run computes: ``train.device`` (``auto | cpu | cuda | cuda:N``) to a ``torch.device``, and
``train.amp`` (``off | bf16 | fp16``) to an autocast context and a gradient scaler.

Pure helpers (no config, no DVC): the pipeline passes the strings from params.yaml.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch

DEVICE_PATTERN = r"^(auto|cpu|cuda|cuda:\d+)$"
AMP_MODES = ("off", "bf16", "fp16")


def resolve_device(spec: str, local_rank: int | None = None) -> torch.device:
    """``auto`` is CUDA (GPU ``local_rank`` under DDP, else the current one) when available, else the CPU;
    ``cuda``/``cuda:N`` without CUDA (or N beyond the GPUs present) is a ``ValueError`` naming the setting."""
    if not re.match(DEVICE_PATTERN, spec):
        raise ValueError(f"train.device: {spec!r} is not one of auto, cpu, cuda, cuda:N")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if spec == "auto":
            return torch.device("cpu")
        raise ValueError(f"train.device is {spec!r} but CUDA is not available here (torch {torch.__version__}, "
                         f"CUDA build: {torch.version.cuda}); set train.device: auto or cpu, or install a CUDA "
                         "build of torch on a machine with a GPU")
    if spec in ("auto", "cuda"):
        return torch.device("cuda", local_rank if local_rank is not None else torch.cuda.current_device())
    index = int(spec.split(":")[1])
    if index >= torch.cuda.device_count():
        raise ValueError(f"train.device is {spec!r} but only {torch.cuda.device_count()} CUDA device(s) are "
                         "visible; use cuda:0 ... or auto")
    return torch.device(spec)


def check_amp(mode: str, device: torch.device) -> None:
    """``fp16`` needs CUDA (CPU autocast is bf16 only); unknown modes are refused."""
    if mode not in AMP_MODES:
        raise ValueError(f"train.amp: {mode!r} is not one of {list(AMP_MODES)}")
    if mode == "fp16" and device.type != "cuda":
        raise ValueError("train.amp: fp16 needs a CUDA device (here the run is on the CPU); use bf16 or off")


@contextlib.contextmanager
def autocast(mode: str, device: torch.device) -> Iterator[None]:
    """Mixed-precision forward for ``bf16``/``fp16``; a no-op context for ``off`` (today's float32 path)."""
    if mode == "off":
        yield
        return
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def grad_scaler(mode: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A gradient scaler for ``fp16`` (its small exponent range underflows gradients); None otherwise."""
    return torch.amp.GradScaler(device.type) if mode == "fp16" else None
