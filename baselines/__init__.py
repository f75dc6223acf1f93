"""Comparison models of the FAENet paper (SchNet, DimeNet++, ForceNet) behind one registry.

``build_model(name, **hparams)`` builds any registered model (FAENet included, as "faenet"). Adding a
baseline: see ``baselines/README.md`` (one file here plus one params.yaml line).
"""

from baselines.registry import (
    accepted_hparams,
    available_models,
    build_model,
    check_hparams,
    discover,
    get_model_class,
    get_presets,
    register,
    register_lazy,
)

__all__ = ["accepted_hparams", "available_models", "build_model", "check_hparams", "discover",
           "get_model_class", "get_presets", "register", "register_lazy"]
