"""`pipeline passes olive` and `pipeline passes olive/Gptq`: Olive's passes, read from the manifest.

Only the committed manifest (JSON) is read: listing Olive's 81 passes imports neither Olive nor torch.
"""

from __future__ import annotations

import json

from schemas.olive_manifest import canonical_pass_name, olive_manifest, olive_passes
from schemas.suggest import did_you_mean

from .render import table


def list_olive_passes(out) -> None:
    """A table of every Olive pass: what it takes and produces, whether it needs data, what it does."""
    manifest = olive_manifest()
    tbl = table(title=f"Olive passes (olive-ai {manifest['olive_version']}; `type: olive`, `pass: NAME`)",
                title_justify="left")
    for col in ("pass", "takes", "produces", "data", "description"):
        tbl.add_column(col, overflow="fold")
    for name, entry in olive_passes().items():
        usable = entry["accepts"] and entry["produces"]
        tbl.add_row(name, " | ".join(entry["accepts"]) or "-", entry["produces"] or "-",
                    "needs" if entry["needs_data"] else "optional" if _takes_data(entry) else "-",
                    entry["description"] if usable else f"(no artifact of this tool fits) {entry['description']}",
                    style=None if usable else "dim")
    out.print(tbl)
    out.print("One pass with its parameters: `pipeline passes olive/NAME`.", markup=False)


def show_olive_pass(name: str, out, err) -> bool:
    """One pass's parameters (type, default, required, description, choices); False when `name` is unknown."""
    canonical = canonical_pass_name(name)
    if canonical is None:
        hint = did_you_mean(name, olive_passes())
        err.print(f"unknown Olive pass {name!r}" + (f"; {hint}" if hint else "; `pipeline passes olive` lists them"),
                  markup=False)
        return False
    entry = olive_passes()[canonical]
    data = "needs data (`data:`)" if entry["needs_data"] else "takes data optionally (`data:`)" \
        if _takes_data(entry) else "takes no data"
    out.print(f"[bold]olive/{canonical}[/bold]: {entry['description']}")
    out.print(f"takes {' | '.join(entry['accepts']) or '-'}, produces {entry['produces'] or '-'}, {data}; "
              f"{entry['module']}" + (f"; {entry['note']}" if entry.get("note") else ""), markup=False)
    tbl = table(show_lines=False)
    for col in ("parameter", "type", "default", "description"):
        tbl.add_column(col, overflow="fold")
    for param, info in entry["params"].items():
        if param.endswith("data_config"):
            continue  # built from the step's `data` and `split`
        kind = info["type"] + (f" (one of {', '.join(map(str, info['choices']))})" if info["choices"] else "")
        default = "(required)" if info["required"] else json.dumps(info["default"])
        tbl.add_row(param, kind, default, info["description"])
    out.print(tbl)
    return True


def _takes_data(entry: dict) -> bool:
    return any(p.endswith("data_config") for p in entry["params"])
