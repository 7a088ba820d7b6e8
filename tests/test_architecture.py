"""The house rules that keep the code readable: the public API is what __init__ lists, every error the package
raises is its own, modules stay small, the schema history and the migrations agree, and the import architecture
(layers, no cycles) holds."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import knnbe_qdrant
from knnbe_qdrant import KnnbeError
from knnbe_qdrant import _schema as S
from knnbe_qdrant import migrations as M

PACKAGE = Path(knnbe_qdrant.__file__).parent
ROOT = PACKAGE.parent
MAX_MODULE_LINES = 400
MODULES = sorted(m.name for m in pkgutil.walk_packages([str(PACKAGE)], prefix="knnbe_qdrant.")
                 if m.name != "knnbe_qdrant.__main__")  # importing that one runs the command


def test_every_public_name_is_exported_and_every_export_resolves():
    for name in knnbe_qdrant.__all__:
        assert getattr(knnbe_qdrant, name) is not None, name
    public = {n for n, v in vars(knnbe_qdrant).items() if not n.startswith("_") and (inspect.isclass(v) or
              inspect.isfunction(v)) and getattr(v, "__module__", "").startswith("knnbe_qdrant")}
    assert public <= set(knnbe_qdrant.__all__), public - set(knnbe_qdrant.__all__)
    for sub in ("store", "encoding", "evaluation", "postings"):
        module = importlib.import_module(f"knnbe_qdrant.{sub}")
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{sub}.{name}"


@pytest.mark.parametrize("module", MODULES)
def test_every_exception_class_derives_from_knnbe_error(module):
    mod = importlib.import_module(module)
    for _, cls in inspect.getmembers(mod, inspect.isclass):
        if issubclass(cls, BaseException) and cls.__module__.startswith("knnbe_qdrant"):
            assert issubclass(cls, KnnbeError), f"{cls.__module__}.{cls.__name__}"


def test_every_raise_names_an_error_of_the_package():
    errors = {name for module in MODULES for name, cls in inspect.getmembers(importlib.import_module(module),
              inspect.isclass) if issubclass(cls, KnnbeError)}
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and isinstance(node.exc.func,
                                                                                                 ast.Name):
                    name = node.exc.func.id
                    # A module's __getattr__ must raise AttributeError: that is the import protocol, not an error.
                    if name not in errors and not (name == "AttributeError" and func.name == "__getattr__"):
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} raises {name}")
    assert not offenders, offenders


def test_no_module_is_longer_than_a_newcomer_reads_at_once():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, long


def test_the_schema_history_and_the_migrations_agree():
    assert [m.id for m in M.MIGRATIONS] == [mid for mid, _ in S.SCHEMA_HISTORY]
    assert M.MIGRATIONS[-1].version == S.SCHEMA_VERSION
    assert [m.version for m in M.MIGRATIONS] == list(range(1, len(M.MIGRATIONS) + 1))
    assert [m["id"] for m in S.all_migrations_applied()] == [m.id for m in M.MIGRATIONS]


def test_the_import_architecture_holds():
    # Layers (each depends only on those below), no cycles among the modules of any package, the store depending on
    # the schema and the errors alone, the formula pure: the contracts live in pyproject.toml. In a process of its
    # own: import-linter's command reconfigures logging, which would silence other tests' loggers.
    command = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(command), "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout[-3000:]
