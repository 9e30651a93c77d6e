"""The OpenAPI document (`openapi.json`, shipped with the package) is the one description of the
API: requests are validated against its schemas here, and the tests validate every answer."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from jsonschema import Draft202012Validator

from portal.api.errors import ApiError

OPENAPI_PATH = Path(__file__).with_name("openapi.json")


@functools.cache
def document_bytes() -> bytes:
    return OPENAPI_PATH.read_bytes()


@functools.cache
def document() -> dict:
    return json.loads(document_bytes())


@functools.cache
def validator(schema_name: str) -> Draft202012Validator:
    """A validator for one component schema, its `$ref`s resolved within the document."""
    doc = document()
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": doc["components"]}
    return Draft202012Validator(schema)


def _param(path) -> str | None:
    parts = [str(p) for p in path]
    if not parts:
        return None
    head, *rest = parts
    return head + "".join(f"[{p}]" for p in rest)


def validate(schema_name: str, data) -> dict:
    """`data` if it fits the schema, else an ApiError naming the first bad parameter."""
    errors = sorted(validator(schema_name).iter_errors(data), key=lambda e: list(e.path))
    if not errors:
        return data
    error = errors[0]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - allowed)
        name = _param([*error.path, unknown[0]]) if unknown else _param(error.path)
        raise ApiError(400, "parameter_unknown", f"Received unknown parameter: {name}", name)
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else ""
        name = _param([*error.path, missing]) if missing else _param(error.path)
        raise ApiError(400, "parameter_missing", f"Missing required parameter: {name}", name)
    name = _param(error.path)
    message = error.message if len(error.message) <= 300 else error.message[:297] + "..."
    where = f"Invalid {name}: " if name else "Invalid request: "
    raise ApiError(400, "parameter_invalid", where + message, name)
