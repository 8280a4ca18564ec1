"""YAML to plain data, remembering where every key and value came from.

PyYAML's safe loader keeps the last of two duplicate keys silently and expands aliases without limit.
We compose the node graph with the safe loader (no object construction, no arbitrary tags) and build
the data ourselves so that duplicate keys are errors, unknown tags are errors, alias bombs stop at a
node budget, and each value's line and column is kept for error messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from schemas.errors import ConfigError, Issue

#: Nodes built per document, aliases counted each time they are expanded: a billion-laughs file
#: reaches this in microseconds instead of eating memory.
MAX_NODES = 200_000

_STD = "tag:yaml.org,2002:"
_SCALAR_TAGS = {f"{_STD}{t}" for t in ("str", "int", "float", "bool", "null", "timestamp")}


@dataclass
class Positions:
    """Where each value (and each mapping key) sits in the file: path tuple -> (line, column), 1-based."""

    file: str
    values: dict[tuple, tuple[int, int]] = field(default_factory=dict)
    keys: dict[tuple, tuple[int, int]] = field(default_factory=dict)
    #: Values that came from elsewhere (a `--set` override): path -> a description of the source.
    origins: dict[tuple, str] = field(default_factory=dict)

    def locate(self, path: tuple, prefer_key: bool = False) -> tuple[int | None, int | None]:
        """The position of `path`, or of its nearest ancestor that has one."""
        path = tuple(path)
        while True:
            table = (self.keys, self.values) if prefer_key else (self.values, self.keys)
            for t in table:
                if path in t:
                    return t[path]
            if not path:
                return None, None
            path = path[:-1]

    def issue(self, path: tuple, message: str, hint: str | None = None, prefer_key: bool = False,
              severity: str = "error") -> Issue:
        """An `Issue` at `path` in this file (or naming the `--set` override it came from)."""
        for n in range(len(path), 0, -1):
            origin = self.origins.get(tuple(path[:n]))
            if origin:
                return Issue(message, tuple(path), origin, None, None, hint, severity)
        line, col = self.locate(path, prefer_key)
        return Issue(message, tuple(path), self.file, line, col, hint, severity)


def _pos(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Builder:
    def __init__(self, positions: Positions):
        self.positions = positions
        self.issues: list[Issue] = []
        self.count = 0
        self._scalars = yaml.constructor.SafeConstructor()

    def build(self, node: yaml.Node, path: tuple) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise _TooLarge()
        self.positions.values.setdefault(path, _pos(node))
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != f"{_STD}seq":
                self._bad_tag(node, path)
            return [self.build(child, path + (i,)) for i, child in enumerate(node.value)]
        return self._scalar(node, path)

    def _mapping(self, node: yaml.MappingNode, path: tuple) -> dict:
        if node.tag != f"{_STD}map":
            self._bad_tag(node, path)
        out: dict = {}
        seen: dict[Any, tuple[int, int]] = {}
        merged: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == f"{_STD}merge":  # `<<: *defaults`: explicit keys win, as YAML 1.1 says
                value = self.build(value_node, path)
                for part in value if isinstance(value, list) else [value]:
                    if isinstance(part, dict):
                        merged.update({k: v for k, v in part.items() if k not in merged})
                    else:
                        self.issues.append(self.positions.issue(path, "`<<` merges only mappings"))
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.issues.append(self.positions.issue(path, "mapping keys must be plain scalars"))
                continue
            key = self._scalar(key_node, path)
            if isinstance(key, (dict, list)) or key is None:
                self.issues.append(self.positions.issue(path, f"invalid key {key_node.value!r}"))
                continue
            key_pos = _pos(key_node)
            if key in seen:
                first = seen[key]
                line, col = key_pos
                self.issues.append(Issue(
                    f"duplicate key {key!r} (first defined at line {first[0]}); YAML keeps only one of them",
                    path + (key,), self.positions.file, line, col, "remove or rename one of the two",
                ))
                continue
            seen[key] = key_pos
            self.positions.keys[path + (key,)] = key_pos
            out[key] = self.build(value_node, path + (key,))
        for k, v in merged.items():
            out.setdefault(k, v)
        return out

    def _scalar(self, node: yaml.ScalarNode, path: tuple) -> Any:
        if node.tag not in _SCALAR_TAGS:
            self._bad_tag(node, path)
            return node.value
        if node.tag == f"{_STD}timestamp":  # dates stay text: no field of ours takes a datetime
            return node.value
        return self._scalars.construct_object(node, deep=True)

    def _bad_tag(self, node: yaml.Node, path: tuple) -> None:
        line, col = _pos(node)
        self.issues.append(Issue(
            f"YAML tag {node.tag!r} is not allowed", tuple(path), self.positions.file, line, col,
            "workflows are plain data: remove the tag (objects are never constructed from YAML)",
        ))


class _TooLarge(Exception):
    pass


def load_yaml(text: str, file: str) -> tuple[Any, Positions]:
    """Parse one YAML document into plain data and its positions; raise ConfigError on any problem."""
    positions = Positions(file)
    if not text.strip() or all(l.strip().startswith("#") or not l.strip() for l in text.splitlines()):
        raise ConfigError([Issue("the file is empty", (), file, 1, 1, "start from a recipe: pipelines/recipes/")])
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (None, None)
        msg = f"YAML syntax error: {exc.problem or exc}" + (f" ({exc.context})" if exc.context else "")
        raise ConfigError([Issue(msg, (), file, line, col)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Issue(f"YAML error: {exc}", (), file)]) from None
    nodes = [n for n in nodes if n is not None]
    if not nodes:
        raise ConfigError([Issue("the file is empty", (), file, 1, 1)])
    if len(nodes) > 1:
        line, col = _pos(nodes[1])
        raise ConfigError([Issue("a workflow file holds one YAML document, this one has several", (), file, line, col,
                                 "remove the `---` separators")])
    builder = _Builder(positions)
    try:
        data = builder.build(nodes[0], ())
    except _TooLarge:
        raise ConfigError([Issue(
            f"the document expands to more than {MAX_NODES} nodes (an alias bomb?)", (), file, 1, 1,
            "use fewer nested aliases",
        )]) from None
    if builder.issues:
        raise ConfigError(builder.issues)
    if not isinstance(data, dict):
        line, col = _pos(nodes[0])
        raise ConfigError([Issue(
            f"the top level must be a mapping (version, name, steps, ...), not {_kind(data)}", (), file, line, col,
        )])
    return data, positions


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )
