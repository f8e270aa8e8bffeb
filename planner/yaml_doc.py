"""Reading one YAML document, bounded and located: the data, and the line of each key and item.

The document is composed by libyaml (C, when PyYAML has it: its wheels do) and read directly
from the composed nodes into plain data while its lines are noted and its limits checked.
Documents with what that direct reading leaves to PyYAML (aliases, merge keys, keys that are not
strings, tags beyond the core schema) go through PyYAML's safe constructor after the bounds are
checked on the nodes; a document out of bounds is composed again by the bounded pure-Python
loader, which refuses it at the line where it goes out of bounds. A 50,000-step file: ~1.5 s
instead of ~14 s with the pure-Python loader and constructor (bench/scale_bench.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import yaml

from dagwright.errors import PlanError, PlanIssue
from dagwright.planner.limits import Limits
from dagwright.planner.source import Path_, Source

_CLoader: type[Any] | None = getattr(yaml, "CSafeLoader", None)
"""libyaml's safe loader: it scans and composes in C (its nodes carry the same line marks)."""

_LIBYAML_NESTING = "exceeded maximum nesting depth"
"""libyaml refuses nesting deeper than 1,000 levels (so its recursive composer is bounded)."""

_STR, _SEQ, _MAP = (f"tag:yaml.org,2002:{kind}" for kind in ("str", "seq", "map"))
_SCALARS = frozenset(
    f"tag:yaml.org,2002:{kind}" for kind in ("null", "bool", "int", "float", "timestamp", "binary")
)
"""The core schema's other scalars: constructed by PyYAML's own function for the tag."""


@contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic garbage collector paused while a bounded input (a workflow file) is read,
    modelled and validated: these allocate many objects that live on and make no garbage
    cycles, and the collector's passes over them cost more than the work itself (reading a
    10,000-step file: 0.77 s of composing with it, 0.17 s without). Memory is bounded by the
    input's limits meanwhile; the collector is on again after (if it was)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Refused(Exception):
    """A document the bounded loader will not compose (at the event's ``start_mark``)."""

    def __init__(self, message: str, event: yaml.Event, hint: str) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint
        mark = event.start_mark
        self.line: int | None = mark.line + 1 if mark is not None else None


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses, while composing, nesting deeper than ``limits.depth``
    and aliases that would add more than ``limits.alias_nodes`` values to the document written
    out (the "billion laughs": a few aliases of aliases expand to billions of values), and
    aliases to a value that contains them (a cycle)."""

    def __init__(self, text: str, limits: Limits) -> None:
        super().__init__(text)
        self.limits = limits
        self._depth = 0
        self._sizes: dict[int, int] = {}  # id(node) -> its values, written out
        self._aliased = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            self._count_alias(event)
            return super().compose_node(parent, index)
        collection = isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent)
        if collection:
            if self._depth >= self.limits.depth:
                raise _Refused(
                    f"nested deeper than {self.limits.depth} levels of lists and mappings",
                    event,
                    f"flatten the data, or {self.limits.raise_hint('depth')}",
                )
            self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= collection
        if node is None:
            return None
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        self._sizes[id(node)] = 1 + sum(self._sizes[id(child)] for child in children)
        return node

    def _count_alias(self, event: yaml.AliasEvent) -> None:
        node = self.anchors.get(event.anchor)
        if node is None:
            return  # PyYAML reports the undefined alias
        size = self._sizes.get(id(node))
        if size is None:  # its anchor is still being composed: the alias is inside it
            raise _Refused(
                f"recursive alias *{event.anchor}: it refers to a value that contains it",
                event,
                "a workflow is a tree of values: write the value out",
            )
        self._aliased += size
        if self._aliased > self.limits.alias_nodes:
            raise _Refused(
                f"YAML aliases expand the workflow by more than {self.limits.alias_nodes:,} "
                f"values (this one, *{event.anchor}, adds {size:,})",
                event,
                "write the values out instead of aliasing them",
            )


def _walk(node: yaml.Node, at: Path_, source: Source, issues: list[PlanIssue]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # a list or mapping as a key: safe_load refused the document already
            key: str = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen:
                issues.append(_duplicate(key, seen[key], line, at, source))
            seen[key] = line
            source.lines[(*at, key)] = line
            _walk(value_node, (*at, key), source, issues)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            source.lines[(*at, i)] = item.start_mark.line + 1
            _walk(item, (*at, i), source, issues)


def _within_bounds(root: yaml.Node, limits: Limits) -> bool:
    """Whether a composed document is within ``limits``: nesting no deeper than
    ``limits.depth``, aliases adding at most ``limits.alias_nodes`` values when written out,
    no alias inside its own anchor. Linear in the distinct nodes (an alias's size is counted,
    never expanded). The caller reports a document out of bounds at the line of the problem
    (``_BoundedLoader``)."""
    sizes: dict[int, int] = {}  # id(node) -> its values, written out
    open_: set[int] = set()  # the collections being walked (an alias to one: a cycle)
    aliased = 0

    def size(node: yaml.Node, depth: int) -> int | None:
        nonlocal aliased
        key = id(node)
        known = sizes.get(key)
        if known is not None:  # a second occurrence: an alias
            aliased += known
            return known if aliased <= limits.alias_nodes else None
        if key in open_:
            return None
        if isinstance(node, yaml.ScalarNode):
            sizes[key] = 1
            return 1
        if depth >= limits.depth:
            return None
        children = (
            node.value
            if isinstance(node, yaml.SequenceNode)
            else (n for pair in node.value for n in pair)
        )
        open_.add(key)
        total = 1
        for child in children:
            found = size(child, depth + 1)
            if found is None:
                return None
            total += found
        open_.discard(key)
        sizes[key] = total
        return total

    return size(root, 0) is not None


class _NotATree(Exception):
    """The document has what ``_read_tree`` leaves to PyYAML's constructor, or is out of
    bounds (the general path says where)."""


def _read_tree(
    loader: Any, root: yaml.Node, limits: Limits, source: Source, issues: list[PlanIssue]
) -> Any:
    """The data of a document whose nodes form a tree (no alias) of strings, core-schema
    scalars, lists and mappings with string keys, nested at most ``limits.depth`` deep: built
    straight from the nodes, noting each key's and item's line and each duplicate key. What
    PyYAML's safe constructor would build, at a third of its cost. Raises ``_NotATree``
    otherwise (before the document could grow: every node is visited once)."""
    seen: set[int] = set()
    lines = source.lines
    construct = loader.yaml_constructors

    def read(node: yaml.Node, at: Path_, depth: int) -> Any:
        key = id(node)
        if key in seen:
            raise _NotATree  # an alias
        seen.add(key)
        tag = node.tag
        if isinstance(node, yaml.ScalarNode):
            if tag == _STR:
                return node.value
            if tag in _SCALARS:
                return construct[tag](loader, node)
            raise _NotATree
        if depth >= limits.depth:
            raise _NotATree
        if isinstance(node, yaml.SequenceNode) and tag == _SEQ:
            items = []
            for i, item in enumerate(node.value):
                lines[(*at, i)] = item.start_mark.line + 1
                items.append(read(item, (*at, i), depth + 1))
            return items
        if not (isinstance(node, yaml.MappingNode) and tag == _MAP):
            raise _NotATree
        mapping: dict[str, Any] = {}
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            if (
                not isinstance(key_node, yaml.ScalarNode)
                or key_node.tag != _STR
                or id(key_node) in seen
            ):
                raise _NotATree  # a merge key, a key that is not a string, an alias
            seen.add(id(key_node))
            name: str = key_node.value
            line = key_node.start_mark.line + 1
            if name in first:
                issues.append(_duplicate(name, first[name], line, at, source))
            first[name] = line
            lines[(*at, name)] = line
            mapping[name] = read(value_node, (*at, name), depth + 1)
        return mapping

    return read(root, (), 0)


def _duplicate(key: str, first: int, line: int, at: Path_, source: Source) -> PlanIssue:
    return PlanIssue(
        f"duplicate key {key!r} (first at line {first})",
        file=source.file,
        line=line,
        field=".".join(map(str, (*at, key))),
        hint="YAML keeps only the last one; remove or rename one of them",
    )


def _composed(text: str) -> tuple[yaml.Node | None, Any] | None:
    """The document's nodes composed by libyaml, and its loader (to construct them); None
    without libyaml, or when the document is nested deeper than libyaml allows."""
    if _CLoader is None:
        return None
    loader = _CLoader(text)
    try:
        return loader.get_single_node(), loader
    except yaml.YAMLError as exc:  # libyaml's own nesting bound: say where ours is passed
        loader.dispose()
        if getattr(exc, "problem", None) == _LIBYAML_NESTING:
            return None
        raise


def _data(text: str, limits: Limits, source: Source, issues: list[PlanIssue]) -> Any:
    composed = _composed(text)
    if composed is not None:
        node, loader = composed
        try:
            if node is None:
                return None
            try:
                return _read_tree(loader, node, limits, source, issues)
            except _NotATree:
                source.lines.clear()
                issues.clear()
            if _within_bounds(node, limits):
                _walk(node, (), source, issues)  # before constructing: merge keys rewrite nodes
                return loader.construct_document(node)
        finally:
            loader.dispose()
    bounded = _BoundedLoader(text, limits)  # refuses where the document goes out of bounds
    try:
        node = bounded.get_single_node()
        if node is None:
            return None
        _walk(node, (), source, issues)
        return bounded.construct_document(node)
    finally:
        bounded.dispose()


def parse_yaml(
    text: str, file: str | None = None, limits: Limits | None = None
) -> tuple[Any, Source]:
    """The data of one YAML document and the line of each key and item. Raises PlanError at the
    line of a syntax error, a duplicate key, nesting deeper than ``limits.depth`` or aliases
    that would expand the document (composed once, so aliases are never followed twice)."""
    source = Source(file=file)
    issues: list[PlanIssue] = []
    try:
        with paused_gc():
            data = _data(text, limits or Limits(), source, issues)
    except _Refused as exc:
        raise PlanError([PlanIssue(exc.message, file=file, line=exc.line, hint=exc.hint)]) from None
    except yaml.YAMLError as exc:
        raise PlanError([_syntax_issue(exc, text, file)]) from None
    if issues:
        raise PlanError(issues)
    return data, source


def _syntax_issue(exc: yaml.YAMLError, text: str, file: str | None) -> PlanIssue:
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow
        line: int | None = text.count("\n", 0, exc.position) + 1
        msg = f"YAML syntax error: unacceptable character #x{exc.character:04x} ({exc.reason})"
        return PlanIssue(msg, file=file, line=line, hint="remove that character from the line")
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    msg = f"YAML syntax error: {problem}" + (f" ({context})" if context else "")
    line = mark.line + 1 if mark else None
    return PlanIssue(msg, file=file, line=line, hint="check indentation and quoting on that line")


__all__ = ["parse_yaml", "paused_gc"]
