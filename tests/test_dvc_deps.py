"""dvc.yaml deps cannot drift from the code: each stage's deps cover every project module its command imports
(transitively, function-level imports included) and every package data file those modules read.

A stage whose deps miss a module it imports is not rerun when that module changes, and its outputs silently
stop matching the code. The checker below derives what each stage needs from the source (``ast``), so adding
an import without the matching dvc.yaml line fails here, naming the stage and the file.
"""

from __future__ import annotations

import ast
import copy
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("faenet", "baselines", "pipeline")
VALIDATED = "metrics/validated.json"  # the validate stage's output, which every other stage depends on
# Imports that only validate params (pipeline.config's registry checks: model names, constructor arguments).
# They cannot change what a stage computes, and the validate stage, which runs first and whose deps cover
# them, fails on them before any stage runs: stages downstream of it need not list them.
VALIDATION_ONLY = frozenset({("pipeline.config", "baselines.registry")})


def module_file(name: str) -> Path | None:
    p = ROOT.joinpath(*name.split("."))
    if (p / "__init__.py").is_file():
        return p / "__init__.py"
    if p.with_suffix(".py").is_file():
        return p.with_suffix(".py")
    return None


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _imports(tree: ast.AST, name: str, path: Path) -> set[str]:
    """Every module ``name`` imports anywhere (top level, functions, relative imports), plus the dynamic
    imports of baselines.registry: every module beside it and the modules of its ``register_lazy`` entries."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "register_lazy"
              and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)):
            out.add(node.args[1].value)
    if name == "baselines.registry":  # _import_package_modules: pkgutil over the package's folder
        out.update(f"baselines.{p.stem}" for p in path.parent.glob("*.py") if not p.stem.startswith("_"))
    return out


@cache
def _parsed(name: str, path: Path) -> tuple[frozenset[str], frozenset[str]]:
    """(modules imported, string constants outside docstrings) of one module file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docs = _docstrings(tree)
    strings = {n.value for n in ast.walk(tree)
               if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs}
    return frozenset(_imports(tree, name, path)), frozenset(strings)


@cache
def data_files() -> list[Path]:
    """Package files that are not code or docs (pipeline/paper.yaml, faenet/element_table.npz, ...)."""
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*")
                  if p.is_file() and p.suffix not in (".py", ".pyc", ".md") and "__pycache__" not in p.parts)


def required_files(module: str, skip_edges: frozenset[tuple[str, str]] = frozenset()) -> set[str]:
    """Repo-relative files ``module`` needs: the transitive closure of its project imports (parent packages'
    ``__init__`` included), plus each data file whose name a module of the closure spells in its code."""
    data = data_files()
    seen: dict[str, Path] = {}
    need: set[str] = set()
    todo = [(None, module)]
    while todo:
        parent, name = todo.pop()
        if name.split(".")[0] not in PACKAGES or any(
                parent == src and (name == dst or name.startswith(dst + ".")) for src, dst in skip_edges):
            continue
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            sub = ".".join(parts[:i])
            path = module_file(sub)
            if path is None or sub in seen:
                continue
            seen[sub] = path
            imports, strings = _parsed(sub, path)
            todo += [(sub, m) for m in imports]
            for d in data:
                rel = d.relative_to(ROOT).as_posix()
                if any(s == d.name or s.endswith("/" + d.name) for s in strings):
                    need.add(rel)
    return need | {p.relative_to(ROOT).as_posix() for p in seen.values()}


def stage_bodies(dvc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """name -> stage definition (a ``foreach`` stage: its ``do`` template)."""
    return {name: (st["do"] if "foreach" in st else st) for name, st in dvc["stages"].items()}


def stage_module(stage: dict[str, Any]) -> str:
    m = re.search(r"python -m ([\w.]+)", stage["cmd"])
    assert m, f"cmd {stage['cmd']!r} does not run `python -m <module>`"
    return m.group(1)


def dep_paths(stage: dict[str, Any]) -> list[str]:
    return [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])]


def uncovered(dvc: dict[str, Any]) -> dict[str, list[str]]:
    """stage -> the files its command needs that no dep covers (a dep folder covers everything under it)."""
    out = {}
    for name, st in stage_bodies(dvc).items():
        deps = [d.rstrip("/") for d in dep_paths(st) if "${" not in d]
        skip = VALIDATION_ONLY if VALIDATED in deps else frozenset()
        need = required_files(stage_module(st), skip)
        missing = sorted(f for f in need if not any(f == d or f.startswith(d + "/") for d in deps))
        if missing:
            out[name] = missing
    return out


@pytest.fixture(scope="module")
def dvc() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def test_every_stage_depends_on_the_code_it_imports(dvc):
    missing = uncovered(dvc)
    assert not missing, "dvc.yaml deps miss files the stage's code imports or reads:\n" + "\n".join(
        f"  {stage}: {files}" for stage, files in missing.items())


def test_the_checker_reports_a_removed_dependency(dvc):
    broken = copy.deepcopy(dvc)
    deps = stage_bodies(broken)["symmetry"]["deps"]
    deps.remove("pipeline/reporting/symmetry_tables.py")
    deps.remove("pipeline/paper.yaml")
    assert uncovered(broken) == {"symmetry": ["pipeline/paper.yaml", "pipeline/reporting/symmetry_tables.py"]}
    # A foreach stage is checked through its template, and a folder dep covers the files under it.
    train = stage_bodies(broken)["train"]["deps"]
    train.remove("baselines")
    assert {"baselines/registry.py", "baselines/schnet.py", "baselines/common.py"} <= set(uncovered(broken)["train"])


def test_the_closure_follows_function_level_and_dynamic_imports():
    # pipeline.symmetry_jobs imports faenet.symmetry_runs inside a function; the registry imports every baseline
    # module (pkgutil) and FAENet lazily; faenet.embedding reads the packaged element table.
    need = required_files("pipeline.train")
    assert {"pipeline/reporting/table_writer.py", "pipeline/paper.yaml", "baselines/forcenet.py", "faenet/model.py",
            "faenet/element_table.npz", "faenet/__init__.py"} <= need
    assert "faenet/expressivity.py" not in need
    lean = required_files("pipeline.report", VALIDATION_ONLY)
    # the report reads JSON: of the library, only the pure facts and metrics (faenet.tasks, faenet.metrics, the
    # torch-free catalyst compositions the config validates)
    assert "pipeline/reporting/claims.py" in lean and not any(f.startswith("baselines/") for f in lean)
    assert {f for f in lean if f.startswith("faenet/")} == {"faenet/__init__.py", "faenet/metrics.py",
                                                             "faenet/tasks.py", "faenet/data/__init__.py",
                                                             "faenet/data/compositions.py"}


def test_validate_runs_first_and_its_output_does_not_change_with_params(dvc):
    stages = stage_bodies(dvc)
    validate = stages["validate"]
    assert stage_module(validate) == "pipeline.config"
    assert validate["params"] == [{"params.yaml": None}]  # `- params.yaml:` = every key of the file
    assert VALIDATED in [next(iter(o)) if isinstance(o, dict) else o for o in validate["outs"]]
    assert [n for n, st in stages.items() if n != "validate" and VALIDATED not in dep_paths(st)] == []
    from pipeline.config import VALIDATED_STAMP

    # The committed stamp is the constant the stage writes (so a params edit changes no stage's deps).
    assert json.loads((ROOT / VALIDATED).read_text()) == VALIDATED_STAMP
