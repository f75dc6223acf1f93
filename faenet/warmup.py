"""The optional warm-up hook of a model (``prepare(train_batches)``), run once before a fresh training.

GemNet fits its scaling factors there (``baselines/gemnet.py``); any model may define one. Every loop that trains
a model calls :func:`prepare_model` first: ``faenet.training.train``, the benchmark's timed training steps
(``faenet.throughput``) and the expressivity classifiers (``faenet.expressivity``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset
from torch_geometric.loader import DataLoader


def prepare_model(model: nn.Module, train_set: Dataset | Sequence[Any], batch_size: int | None = None,
                  device: torch.device | None = None) -> bool:
    """The optional warm-up hook of a model: the first of ``model``, ``model.model``, ... (symmetry wrappers hold
    the model as ``.model``) with a ``prepare(train_batches)`` method gets the training batches in dataset order,
    lazily (it takes what it needs). GemNet fits its scaling factors there. Returns whether a hook ran.

    ``train_set`` is a dataset batched by ``batch_size``, or (``batch_size`` None) already a sequence of batches
    (for callers that train on their own batches: timing, probes). The loader has its own generator, so the hook
    draws nothing from the global RNG streams. ``device``: where the model is (batches are moved there)."""
    m: Any = model
    for _ in range(4):
        if m is None:
            break
        hook = getattr(m, "prepare", None)
        if callable(hook):
            batches: Any = (train_set if batch_size is None else
                            DataLoader(train_set, batch_size=batch_size, shuffle=False,
                                       generator=torch.Generator().manual_seed(0)))
            if device is not None and device.type != "cpu":  # the model already lives there
                batches = (b.to(device) for b in batches)
            hook(batches)
            return True
        m = getattr(m, "model", None)
    return False
