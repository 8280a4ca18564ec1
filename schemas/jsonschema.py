"""The JSON Schema of the workflow format, for editors (the YAML language server, VS Code)."""

from __future__ import annotations

from typing import Any

from .catalog import step_types
from .sweep import MATRIX_KEY, SEARCH_KEY, Search
from .workflow import WorkflowHeader

SCHEMA_ID = "https://github.com/pipeline-orchestrator/pipeline/schemas/workflow.json"


def workflow_json_schema() -> dict[str, Any]:
    """The header's schema with `steps` as a map of a discriminated union of every step type."""
    schema = WorkflowHeader.model_json_schema(mode="validation")
    defs = schema.setdefault("$defs", {})
    variants = []
    mapping = {}
    search = Search.model_json_schema(mode="validation", ref_template="#/$defs/{model}")
    defs.update(search.pop("$defs", {}))
    defs["Search"] = search
    for name, cls in step_types().items():
        sub = cls.model_json_schema(mode="validation", ref_template="#/$defs/{model}")
        defs.update(sub.pop("$defs", {}))
        # any step may sweep its fields (pipelines.matrix expands it before the config sees it)
        sub.setdefault("properties", {})[MATRIX_KEY] = {
            "type": "object", "description": "Field -> values: one step per combination (a sweep).",
            "propertyNames": {"enum": [f for f in cls.model_fields if f != "type"]},
            "additionalProperties": {"type": "array", "minItems": 1}}
        sub["properties"][SEARCH_KEY] = {"$ref": "#/$defs/Search"}
        title = cls.__name__
        defs[title] = sub
        ref = f"#/$defs/{title}"
        variants.append({"$ref": ref})
        mapping[name] = ref
    schema["properties"]["steps"] = {
        "type": "object",
        "description": "Step name -> step config; `type` picks the pass.",
        "propertyNames": {"pattern": r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$"},
        "additionalProperties": {"oneOf": variants, "discriminator": {"propertyName": "type", "mapping": mapping}},
    }
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = SCHEMA_ID
    schema["title"] = "pipeline workflow"
    return schema
