"""Which JSON Schemas llama.cpp's grammar sampling can enforce, checked before any work.

Structured output (``response_format``, Ollama's ``format``, a tool's
``parameters``) is enforced on the worker by a grammar that llama-cpp-python
converts from the schema. Its converter silently drops keywords it has no rule
for (``minimum``, ``not``, ``uniqueItems``...), so a schema using one would be
accepted and then not enforced. ``check_schema`` refuses those with a 400
naming the construct and where it is, instead of promising what the output
will not keep. Annotations (``title``, ``description``, ``default``...) are
fine. Pure: nothing here does I/O.
"""

from __future__ import annotations

from model_swap.errors import BadRequest

# Validation keywords the converter ignores: accepting them would not constrain the output.
UNENFORCEABLE = (
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "not",
    "if",
    "then",
    "else",
    "patternProperties",
    "propertyNames",
    "dependentRequired",
    "dependentSchemas",
    "dependencies",
    "uniqueItems",
    "contains",
    "minContains",
    "maxContains",
    "minProperties",
    "maxProperties",
    "unevaluatedProperties",
    "unevaluatedItems",
)
# String formats the converter has a rule for; any other would accept any string.
FORMATS = ("date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5")
TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
# Keywords whose value is a schema, or a list or map of schemas.
_SUBSCHEMA = ("items", "additionalProperties", "additionalItems")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
MAX_DEPTH = 64


def check_schema(schema: object, param: str) -> dict:
    """``schema`` if a grammar can enforce all of it; else BadRequest naming the construct."""
    if not isinstance(schema, dict):
        raise BadRequest(f"{param} must be a JSON Schema object", param=param)
    _check(schema, param, param, 0)
    return schema


def _check(schema: object, where: str, param: str, depth: int) -> None:
    if isinstance(schema, bool):
        return  # true / false schemas
    if not isinstance(schema, dict):
        raise BadRequest(f"{where} must be a JSON Schema object", param=param)
    if depth > MAX_DEPTH:
        raise BadRequest(f"{where} nests schemas more than {MAX_DEPTH} deep", param=param)
    for keyword in UNENFORCEABLE:
        if keyword in schema:
            raise BadRequest(
                f"{where} uses `{keyword}`, which llama.cpp's grammar sampling cannot enforce "
                "(remove it, or check it after the answer)",
                param=param,
            )
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    for item in kinds:
        if item is not None and item not in TYPES:
            raise BadRequest(f"{where}.type {item!r} is not a JSON Schema type", param=param)
    fmt = schema.get("format")
    if fmt is not None and "pattern" not in schema and fmt not in FORMATS:
        raise BadRequest(
            f"{where} uses `format: {fmt}`, which llama.cpp's grammar sampling cannot enforce "
            f"(enforceable: {', '.join(FORMATS[:4])}; or give a `pattern`)",
            param=param,
        )
    ref = schema.get("$ref")
    if ref is not None and (not isinstance(ref, str) or not ref.startswith("#")):
        raise BadRequest(
            f"{where}.$ref {ref!r}: only references inside the schema (#/...) are supported",
            param=param,
        )
    for keyword in _SUBSCHEMA:
        value = schema.get(keyword)
        if isinstance(value, dict):
            _check(value, f"{where}.{keyword}", param, depth + 1)
    for keyword in _SUBSCHEMA_LISTS:
        value = schema.get(keyword)
        if value is None:
            continue
        if not isinstance(value, list):
            raise BadRequest(f"{where}.{keyword} must be a list of schemas", param=param)
        for index, item in enumerate(value):
            _check(item, f"{where}.{keyword}[{index}]", param, depth + 1)
    for keyword in _SUBSCHEMA_MAPS:
        value = schema.get(keyword)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise BadRequest(f"{where}.{keyword} must be an object of schemas", param=param)
        for name, item in value.items():
            _check(item, f"{where}.{keyword}.{name}", param, depth + 1)
