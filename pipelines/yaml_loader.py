"""YAML to plain data, remembering where every key and value came from.

PyYAML's safe loader keeps the last of two duplicate keys silently and expands aliases without limit.
We compose the node graph with the safe loader (no object construction, no arbitrary tags) and build
the data ourselves so that duplicate keys are errors, unknown tags are errors, alias bombs stop at a
node budget, and each value's line and column is kept for error messages.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from schemas.errors import ConfigError, Issue

#: Nodes built per document, aliases counted each time they are expanded: a billion-laughs file
#: reaches this in microseconds instead of eating memory.
MAX_NODES = 200_000

#: Mappings and lists inside each other: real workflows nest 5-6 deep. The composer and our builder
#: recurse per level, so a file nested ~300 deep used to end in a RecursionError traceback.
MAX_DEPTH = 100

#: The largest workflow file read, in bytes (real ones are a few KB). PyYAML's pure-Python parser
#: needs ~100 bytes of memory per input byte and minutes for tens of MB, so a bigger file is refused
#: before it is parsed. Override with the environment variable of this name.
MAX_BYTES_ENV = "PIPELINE_MAX_WORKFLOW_BYTES"
DEFAULT_MAX_BYTES = 4 * 1024 * 1024

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
        self.depth = 0
        self._scalars = yaml.constructor.SafeConstructor()

    def build(self, node: yaml.Node, path: tuple) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise _TooLarge()
        # aliases and merge keys can nest what the file itself keeps shallow: count levels as built
        self.depth += 1
        if self.depth > 2 * MAX_DEPTH:
            raise _TooDeep(node.start_mark)
        try:
            self.positions.values.setdefault(path, _pos(node))
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
            if isinstance(node, yaml.SequenceNode):
                if node.tag != f"{_STD}seq":
                    self._bad_tag(node, path)
                return [self.build(child, path + (i,)) for i, child in enumerate(node.value)]
            return self._scalar(node, path)
        finally:
            self.depth -= 1

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


class _TooDeep(Exception):
    def __init__(self, mark: yaml.Mark | None):
        super().__init__()
        self.mark = mark


class _TooMany(Exception):
    pass


class _LimitedLoader(yaml.SafeLoader):
    """The safe loader, with nesting depth and node count checked on each parser event as it arrives.

    PyYAML's scanner and parser keep explicit stacks (no recursion); its composer recurses once per
    level. Checking the event stream stops a deep or huge document before the composer builds it.
    """

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def get_event(self) -> yaml.Event:
        event = super().get_event()
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise _TooDeep(event.start_mark)
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            self._depth -= 1
        if isinstance(event, yaml.NodeEvent):
            self._nodes += 1
            if self._nodes > MAX_NODES:
                raise _TooMany()
        return event


def max_workflow_bytes() -> int:
    """The size limit of a workflow file: `PIPELINE_MAX_WORKFLOW_BYTES`, else 4 MB."""
    raw = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError([Issue(f"{MAX_BYTES_ENV}={raw!r} is not a positive number of bytes", (), "environment",
                                 hint=f"unset it (default {DEFAULT_MAX_BYTES}) or give a whole number, e.g. 8388608")])
    return value


def read_workflow_text(path: str | Path) -> str:
    """The text of a workflow file; ConfigError (never a hang or a traceback) for anything else.

    A FIFO or a device (/dev/zero) would block or never end: only regular files are opened. At most
    limit + 1 bytes are read, so a huge file costs nothing. The text must be UTF-8 (YAML's default).
    """
    shown = str(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError([Issue("no such workflow file", (), shown, hint="check the path")]) from None
    except (OSError, ValueError) as exc:  # a symlink loop, a name too long, a NUL in the name
        raise ConfigError([Issue(f"cannot read the workflow: {_reason(exc)}", (), shown, hint="check the path")]) from None
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError([Issue("this is a folder, not a workflow file", (), shown, hint="name the .yaml file in it")])
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError([Issue(f"this is {_file_kind(st.st_mode)}, not a workflow file", (), shown,
                                 hint="give a regular .yaml file")])
    limit = max_workflow_bytes()
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise ConfigError([Issue(f"cannot read the workflow: {_reason(exc)}", (), shown)]) from None
    if len(data) > limit:
        raise ConfigError([Issue(
            f"the file is larger than {limit} bytes ({max(st.st_size, len(data))} bytes); a workflow is a few KB",
            (), shown, 1, 1, f"check it is the right file, or raise the limit with {MAX_BYTES_ENV}",
        )])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        column = len(before[before.rfind(b"\n") + 1:].decode("utf-8", errors="replace")) + 1
        raise ConfigError([Issue(
            f"the file is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})", (), shown, line, column,
            "save it as UTF-8",
        )]) from None


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def load_yaml(text: str, file: str) -> tuple[Any, Positions]:
    """Parse one YAML document into plain data and its positions; raise ConfigError on any problem."""
    positions = Positions(file)
    if not text.strip() or all(l.strip().startswith("#") or not l.strip() for l in text.splitlines()):
        raise ConfigError([Issue("the file is empty", (), file, 1, 1, "start from a recipe: pipelines/recipes/")])
    try:
        nodes = _compose_all(text)
    except _TooDeep as exc:
        line, col = (exc.mark.line + 1, exc.mark.column + 1) if exc.mark else (None, None)
        raise ConfigError([Issue(
            f"the document nests mappings and lists more than {MAX_DEPTH} levels deep", (), file, line, col,
            "a workflow nests a few levels: check the brackets and the indentation here",
        )]) from None
    except _TooMany:
        raise ConfigError([Issue(
            f"the document has more than {MAX_NODES} values; a workflow has a few hundred", (), file, 1, 1,
            "check it is the right file",
        )]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (None, None)
        msg = f"YAML syntax error: {exc.problem or exc}" + (f" ({exc.context})" if exc.context else "")
        raise ConfigError([Issue(msg, (), file, line, col)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Issue(f"YAML error: {exc}", (), file)]) from None
    except RecursionError:  # the limits above should stop it first; never show a traceback for input
        raise ConfigError([Issue("the document nests too deeply to read", (), file, 1, 1)]) from None
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
    except _TooDeep:
        raise ConfigError([Issue(
            f"the document, with its aliases expanded, nests more than {MAX_DEPTH} levels deep", (), file, 1, 1,
            "use fewer nested aliases and merge keys (`<<: *name`)",
        )]) from None
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


def _compose_all(text: str) -> list:
    """`yaml.compose_all` with the depth and node limits of `_LimitedLoader`."""
    loader = _LimitedLoader(text)
    try:
        nodes = []
        while loader.check_node():
            nodes.append(loader.get_node())
        return nodes
    finally:
        loader.dispose()


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )
