"""The known workflows: the YAML files of one folder (``DAGWRIGHT_WORKFLOWS``), each known by its
``name``, so that the API and the Celery ``dagwright.submit`` task can run a workflow by name.

Listing reads and parses the files (bounded by the limits) and runs nothing: a workflow's
``tools:`` modules are loaded only when a run of it is prepared (``planner.prepare``), from the
workflow's own folder as for the CLI. A file that does not parse is listed among the problems,
not fatal to the others; two files with one name: the first in path order wins, the other is a
problem.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagwright.errors import PlanError
from dagwright.planner.limits import Limits
from dagwright.planner.loader import load_workflow


@dataclass(frozen=True)
class Entry:
    """One known workflow."""

    name: str
    path: Path
    description: str
    inputs: dict[str, Any]
    steps: int

    def as_dict(self, root: Path) -> dict[str, Any]:
        try:
            file = str(self.path.relative_to(root))
        except ValueError:
            file = str(self.path)
        return {
            "name": self.name,
            "file": file,
            "description": self.description,
            "inputs": self.inputs,
            "steps": self.steps,
        }


@dataclass(frozen=True)
class Listing:
    entries: dict[str, Entry]
    problems: list[dict[str, Any]] = field(default_factory=list)


class Catalog:
    """The workflows of ``folder`` (recursively: ``*.yaml``, ``*.yml``), re-read when a file
    changes (by modification time and size)."""

    def __init__(self, folder: str | Path, limits: Limits | None = None) -> None:
        self.folder = Path(folder).expanduser().resolve()
        self.limits = limits or Limits()
        self._lock = threading.Lock()
        self._seen: dict[Path, tuple[tuple[float, int], Entry | dict[str, Any]]] = {}

    def listing(self) -> Listing:
        files = self._files()
        with self._lock:
            for gone in set(self._seen) - set(files):
                del self._seen[gone]
            entries: dict[str, Entry] = {}
            problems: list[dict[str, Any]] = []
            for path in files:
                found = self._read(path)
                if isinstance(found, dict):
                    problems.append(found)
                elif found.name in entries:
                    first = entries[found.name].path
                    problems.append(
                        {"file": str(path), "message": f"name {found.name!r} is taken by {first}"}
                    )
                else:
                    entries[found.name] = found
        return Listing(entries, problems)

    def find(self, name: str) -> Entry | None:
        return self.listing().entries.get(name)

    def names(self) -> list[str]:
        return sorted(self.listing().entries)

    def _files(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        found = [*self.folder.rglob("*.yaml"), *self.folder.rglob("*.yml")]
        return sorted(p for p in found if p.is_file())

    def _read(self, path: Path) -> Entry | dict[str, Any]:
        try:
            stat = path.stat()
        except OSError as exc:
            return {"file": str(path), "message": f"cannot read: {exc.strerror}"}
        key = (stat.st_mtime, stat.st_size)
        cached = self._seen.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        found: Entry | dict[str, Any]
        try:
            wf = load_workflow(path, self.limits).workflow
            found = Entry(
                name=wf.name,
                path=path,
                description=wf.description,
                inputs={
                    k: v.model_dump(mode="json", exclude_unset=True) for k, v in wf.inputs.items()
                },
                steps=len(wf.steps),
            )
        except PlanError as exc:
            first = exc.issues[0] if exc.issues else None
            message = f"{first.location()}: {first.message}" if first else str(exc)
            found = {"file": str(path), "message": message}
        self._seen[path] = (key, found)
        return found


__all__ = ["Catalog", "Entry", "Listing"]
