"""Write plain data as a readable workflow YAML, with comments where a generator wants to explain itself.

PyYAML's dumper cannot write comments, and a generated workflow (`pipeline import-olive`) must say
where each item came from. This writer handles what workflows hold (mappings, lists, strings,
numbers, booleans, None): short lists of scalars and small mappings in flow style, the rest in block
style, strings quoted only when YAML would read them as something else. What it writes reads back
as the same data with `pipelines.yaml_loader` (tested).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

#: Plain (unquoted) strings: a conservative set that no YAML 1.1 resolver reads as another type.
_PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./\-]*$")
_RESERVED = {"true", "false", "yes", "no", "on", "off", "y", "n", "null", "none", "~"}
#: Flow style (`{a: 1}`, `[a, b]`) when the whole line stays this short and holds no nested container.
FLOW_WIDTH = 100


def scalar(value: Any) -> str:
    """One scalar as YAML text that reads back as the same value and type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
        text = repr(value)
        # YAML 1.1 (PyYAML) reads `1e-05` as a string: the mantissa needs a dot
        mantissa, _, exponent = text.partition("e")
        if exponent and "." not in mantissa:
            text = f"{mantissa}.0e{exponent}"
        return text
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in _RESERVED:
        return text
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a valid YAML double-quoted scalar


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, (dict, list))


def flow(value: Any) -> str | None:
    """`value` in flow style when it is a container of scalars only, else None."""
    if isinstance(value, list) and all(_is_scalar(v) for v in value):
        return "[" + ", ".join(scalar(v) for v in value) + "]"
    if isinstance(value, dict) and all(_is_scalar(v) for v in value.values()):
        return "{" + ", ".join(f"{scalar(k)}: {scalar(v)}" for k, v in value.items()) + "}"
    return None


def with_comment(line: str, comment: str | None) -> str:
    """`line  # comment` (multi-line comments are joined; a comment never breaks the YAML)."""
    if not comment:
        return line
    return f"{line}  # {' '.join(comment.split())}"


def block(data: dict, indent: int = 0, comments: dict[str, str] | None = None) -> list[str]:
    """A mapping as block-style lines; `comments` maps a top-level key of `data` to a trailing comment."""
    comments = comments or {}
    pad = " " * indent
    lines: list[str] = []
    for key, value in data.items():
        head = f"{pad}{scalar(key)}:"
        inline = scalar(value) if _is_scalar(value) else flow(value)
        if inline is not None and (not value or len(head) + 1 + len(inline) <= FLOW_WIDTH or _is_scalar(value)):
            lines.append(with_comment(f"{head} {inline}", comments.get(key)))
        elif isinstance(value, dict):
            lines.append(with_comment(head, comments.get(key)))
            lines += block(value, indent + 2)
        else:
            lines.append(with_comment(head, comments.get(key)))
            for item in value:
                if isinstance(item, dict) and item:
                    inner = block(item, indent + 4)
                    lines.append(f"{pad}  - {inner[0].lstrip()}")
                    lines += inner[1:]
                else:
                    lines.append(f"{pad}  - {scalar(item) if _is_scalar(item) else flow(item) or json.dumps(item)}")
    return lines


def comment_lines(text: str, indent: int = 0) -> list[str]:
    """Text as `# ...` lines (each input line kept; empty ones become a bare `#`)."""
    pad = " " * indent
    return [f"{pad}# {line}".rstrip() if line else f"{pad}#" for line in text.splitlines()]
