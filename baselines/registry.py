"""Model registry: name -> model class, for FAENet and every baseline.

A new baseline is ONE file in ``baselines/`` whose class carries ``@register("name")``, plus its cells under
``train_cells:`` and its hyperparameters under ``profiles.<profile>.hparams.<name>`` in params.yaml; the pipeline
then calls ``build_model(name, **hparams)``. Importing this module imports every module beside it (``pkgutil``), so
nothing else needs editing. User plugins outside the package: ``discover([folder, ...])``.

Models follow the project interface (see ``faenet/data/records.py``): ``Model(**hparams)`` with attribute
``regress_forces``; ``model(batch) -> {"energy": (B,), "forces": (N, 3) if regress_forces}``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import pkgutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

# name -> class, or a zero-argument loader returning the class (lazy entries, e.g. "faenet").
_REGISTRY: dict[str, type | Callable[[], type]] = {}
# Plugin files already imported by ``discover``: re-discovering a folder must not re-register.
_DISCOVERED: set[Path] = set()
# Modules of this folder that define no model: not imported for registration (``common``: shared helpers).
_SKIP_MODULES = ("registry", "common")


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make ``name`` buildable by ``build_model(name, **hparams)``.

    Registering a different class under a taken name is an error (two files claiming one name would
    otherwise silently shadow each other). Re-executing the same module (same module path and class
    name) replaces the entry.
    """
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError(f"register(name): name must be a non-empty string without surrounding blanks, "
                         f"got {name!r}")

    def decorator(cls: type) -> type:
        if not isinstance(cls, type):
            raise ValueError(f"register({name!r}) decorates a class, got {cls!r}")
        old = _REGISTRY.get(name)
        if old is not None and old is not cls:
            key = (cls.__module__, cls.__qualname__)
            same = isinstance(old, type) and (old.__module__, old.__qualname__) == key
            if not same:
                where = f"{old.__module__}.{old.__qualname__}" if isinstance(old, type) else "a lazy loader"
                raise ValueError(f"model name {name!r} is already registered to {where}; "
                                 f"cannot register {cls.__module__}.{cls.__qualname__} under it")
        _REGISTRY[name] = cls
        cls.registry_name = name
        return cls

    return decorator


def register_lazy(name: str, module: str, attr: str) -> None:
    """Register ``name`` -> ``module.attr`` without importing ``module`` until the class is needed."""

    def load() -> type:
        try:
            mod = importlib.import_module(module)
        except ImportError as err:
            raise ImportError(f"model {name!r} lives in {module}.{attr}, which failed to import: "
                              f"{err}") from err
        cls = getattr(mod, attr, None)
        if not isinstance(cls, type):
            raise ImportError(f"model {name!r}: {module} has no class {attr!r}")
        return cls

    if name in _REGISTRY:
        raise ValueError(f"model name {name!r} is already registered")
    _REGISTRY[name] = load


def available_models() -> list[str]:
    """Sorted registered names (lazy entries included, without importing them)."""
    return sorted(_REGISTRY)


def get_model_class(name: str) -> type:
    """The class registered as ``name``; ``ValueError`` listing the registered names if unknown."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ValueError(f"unknown model {name!r}; registered models: {available_models()}")
    if isinstance(entry, type):
        return entry
    cls = entry()
    _REGISTRY[name] = cls  # resolve the lazy entry once
    return cls


def accepted_hparams(name: str) -> list[str] | None:
    """Keyword arguments the constructor of ``name`` accepts, or None if it takes ``**kwargs``."""
    params = inspect.signature(get_model_class(name).__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return [p.name for p in list(params.values())[1:]
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]


def check_hparams(name: str, hparams: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the model, the bad key and the accepted keys, without building.

    Also checks ``regress_forces`` against the class attribute ``force_modes`` when the class has one.
    """
    accepted = accepted_hparams(name)
    if accepted is not None:
        bad = [k for k in hparams if k not in accepted]
        if bad:
            raise ValueError(f"model {name!r}: unknown hyperparameter(s) {bad}; accepted: {sorted(accepted)}")
    modes = getattr(get_model_class(name), "force_modes", None)
    if modes is not None and "regress_forces" in hparams and hparams["regress_forces"] not in modes:
        raise ValueError(f"model {name!r}: regress_forces={hparams['regress_forces']!r} is not supported; "
                         f"allowed: {list(modes)}")


def build_model(name: str, **hparams: Any) -> Any:
    """``get_model_class(name)(**hparams)`` after ``check_hparams``."""
    check_hparams(name, hparams)
    return get_model_class(name)(**hparams)


def get_presets(name: str) -> dict[str, dict[str, Any]]:
    """The class's own ``PRESETS`` attribute if it has one (a file registering several models), else the
    module-level ``PRESETS`` of the model's module (``{"small": {...}}``: a size for a notebook or a test
    on a CPU), or {} if it has none. The pipeline's hyperparameters are params.yaml's, never these."""
    cls = get_model_class(name)
    own = cls.__dict__.get("PRESETS")  # a class's own PRESETS (several models in one file) wins
    if own is not None:
        return dict(own)
    mod = sys.modules.get(cls.__module__)
    return dict(getattr(mod, "PRESETS", {}) or {})


def _import_package_modules() -> None:
    """Import every module of the ``baselines`` package so their ``@register`` decorators run."""
    package = __name__.rpartition(".")[0]
    for info in pkgutil.iter_modules([str(Path(__file__).resolve().parent)]):
        if info.name.startswith("_") or info.name in _SKIP_MODULES:
            continue
        importlib.import_module(f"{package}.{info.name}")


def discover(extra_dirs: Iterable[str | Path]) -> list[str]:
    """Import every ``*.py`` (not starting with "_") in each folder; return the names newly registered.

    Each file is imported once per process under a private module name, so two folders may hold files
    with the same name. A missing folder is a ``ValueError``.
    """
    before = set(_REGISTRY)
    for folder in extra_dirs:
        folder = Path(folder).expanduser().resolve()
        if not folder.is_dir():
            raise ValueError(f"discover: plugin folder {str(folder)!r} does not exist or is not a directory")
        for path in sorted(folder.glob("*.py")):
            if path.name.startswith("_") or path in _DISCOVERED:
                continue
            tag = hashlib.sha1(str(path.parent).encode()).hexdigest()[:10]
            mod_name = f"_baseline_plugins.p{tag}.{path.stem}"
            spec = importlib.util.spec_from_file_location(mod_name, path)
            if spec is None or spec.loader is None:
                raise ImportError(f"discover: cannot import plugin file {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception:
                del sys.modules[mod_name]
                raise
            _DISCOVERED.add(path)
    return sorted(set(_REGISTRY) - before)


register_lazy("faenet", "faenet.model", "FAENet")
_import_package_modules()
