"""FAENet: Frame Averaging Equivariant GNN (Duval et al., ICML 2023), as an importable library.

Layers: ``faenet`` (this package) knows nothing of ``baselines`` or ``pipeline``; it takes plain
arguments and returns tensors, dataclasses and dicts.
"""

__version__ = "0.1.0"
