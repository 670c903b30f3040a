"""The emulator's view of Mistral's OpenAPI spec (``mistral-openapi.yaml``): request
bodies, multipart fields and query parameters checked against it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_PATH = Path(__file__).with_name("mistral-openapi.yaml")
_SPEC_CACHE: dict[str, Any] = {}


def load_spec() -> dict[str, Any]:
    """The spec, with the few numeric bounds it writes as strings turned into numbers."""
    if "spec" not in _SPEC_CACHE:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 6x faster
        spec = yaml.load(SPEC_PATH.read_text(), Loader=loader)  # a safe loader, C or Python

        def fix(node: Any) -> None:
            if isinstance(node, dict):
                for key, value in node.items():
                    if key in (
                        "minimum",
                        "maximum",
                        "exclusiveMinimum",
                        "exclusiveMaximum",
                    ) and isinstance(value, str):
                        node[key] = float(value)
                    else:
                        fix(value)
            elif isinstance(node, list):
                for item in node:
                    fix(item)

        fix(spec)
        _SPEC_CACHE["spec"] = spec
    return _SPEC_CACHE["spec"]


class SpecChecker:
    """Checks requests against the spec: ``path: message`` for each way one breaks it."""

    def __init__(self) -> None:
        self.spec = load_spec()
        self._registry = Registry().with_resource("spec", Resource(self.spec, DRAFT202012))

    def check_body(self, schema_name: str, body: Any) -> list[str]:
        """``path: message`` for each way ``body`` breaks the schema (the deepest cause)."""
        validator = jsonschema.Draft202012Validator(
            {"$ref": f"spec#/components/schemas/{schema_name}"},
            registry=self._registry,
            format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
        )
        errors = []
        for error in validator.iter_errors(body):
            if error.context:
                error = jsonschema.exceptions.best_match(error.context)
            errors.append(f"{'.'.join(map(str, error.absolute_path)) or 'body'}: {error.message}")
        return errors

    def check_query(self, path: str, method: str, query: dict[str, list[str]]) -> list[str]:
        operation = self.spec["paths"][path][method]
        declared = {p["name"]: p for p in operation.get("parameters", []) if p["in"] == "query"}
        errors = []
        free_form = bool(self.object_parameters(path, method))
        for name, values in query.items():
            if name not in declared:
                if not free_form:  # else a member of an exploded object (style form)
                    errors.append(f"query: unknown parameter {name!r}")
                continue
            schema = declared[name].get("schema", {})
            for value in values:
                if not _query_value_fits(value, schema):
                    errors.append(f"query: {name}={value!r} does not fit {schema}")
        return errors

    def object_parameters(self, path: str, method: str) -> list[str]:
        """The query parameters of ``path`` whose value is an object: sent exploded
        (OpenAPI's default style ``form``), each member a parameter of its own."""
        operation = self.spec["paths"][path][method]
        return [
            p["name"]
            for p in operation.get("parameters", [])
            if p["in"] == "query"
            and any(o.get("type") == "object" for o in p.get("schema", {}).get("anyOf", []))
        ]

    def exploded_members(
        self, path: str, method: str, query: dict[str, list[str]]
    ) -> dict[str, str]:
        """The members of an exploded object parameter in ``query``: what is not declared."""
        operation = self.spec["paths"][path][method]
        declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
        return {name: values[-1] for name, values in query.items() if name not in declared}

    def upload_fields(self) -> set[str]:
        """The multipart fields ``POST /v1/files`` declares."""
        content = self.spec["paths"]["/v1/files"]["post"]["requestBody"]["content"]
        return set(content["multipart/form-data"]["schema"]["properties"])


def _query_value_fits(value: str, schema: dict[str, Any]) -> bool:
    options = schema.get("anyOf", [schema])
    for option in options:
        kind = option.get("type")
        if kind == "integer" and re.fullmatch(r"-?\d+", value):
            return True
        if kind == "boolean" and value in ("true", "false"):
            return True
        if kind == "string":
            return "enum" not in option or value in option["enum"]
        if kind == "array" or "$ref" in option or kind is None:
            return True
    return False
