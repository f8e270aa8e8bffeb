"""Importing the modules the settings allow by name (``DAGWRIGHT_TOOLS``): from the Python
path, else from the current directory, which the console scripts (``dagwright``, its worker and
server) do not put on the path."""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

_lock = threading.RLock()


def import_allowed(module: str) -> ModuleType:
    """Import a module the settings allow by name (``DAGWRIGHT_TOOLS``): from the Python path
    (an installed package, ``PYTHONPATH``), else from the current directory — the one the CLI,
    the worker or the server was started in, which the console scripts do not put on the path.
    Raises ModuleNotFoundError saying where it looked, and what to do."""
    top = module.partition(".")[0]
    with _lock:
        if top not in sys.modules and _spec_on_path(top) is None:
            _import_from(Path.cwd(), top)
    return importlib.import_module(module)


def _import_from(cwd: Path, top: str) -> None:
    """Import top-level module ``top`` from the folder ``cwd`` (under its own name, so that a
    later ``import top`` finds it)."""
    spec = importlib.machinery.PathFinder.find_spec(top, [str(cwd)])
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(
            f"no module named {top!r}: looked for {top}.py or {top}/__init__.py in the "
            f"current directory ({cwd}) and on the Python path (installed packages, "
            "PYTHONPATH); start dagwright (each worker, the server) in the folder that "
            "holds it, or add that folder to PYTHONPATH, or install it",
            name=top,
        )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[top] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(top, None)
        raise


def _spec_on_path(top: str) -> Any:
    try:
        return importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None


def imported_from(module: str) -> Path | None:
    """The real path of the file ``module`` was imported from, if it was."""
    file = getattr(sys.modules.get(module), "__file__", None)
    return Path(file).resolve() if file else None


__all__ = ["import_allowed", "imported_from"]
