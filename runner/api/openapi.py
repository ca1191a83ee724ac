"""The API's description: each route's `Operation` (credential, body, query, answers by status), and the OpenAPI
3.1 document generated from those and the pydantic models of runner.api.schemas.

The routes are built from the same `Operation`s (runner.api.routes), so what is served, what is checked (the
credential, the body's model) and what is described are one table. Answers every operation shares are added
here, once: 401 for an operation behind a credential, 400 for one that takes a body or a query, 413 for a body.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from runner.api.schemas import Error, Unauthorized

Credential = Literal["owner", "alerts", "none"]
Schema = dict[str, Any]
REF = "#/components/schemas/{model}"
SECURITY: dict[Credential, list[Schema]] = {"owner": [{"ownerToken": []}], "alerts": [{"alertSecret": []}],
                                            "none": []}


@dataclass(frozen=True, slots=True)
class Answer:
    """One status's answer: a JSON body of `model`, or text of `media` (a model of None and no media: any
    JSON object)."""

    description: str
    model: type[BaseModel] | None = None
    media: str | None = None
    headers: tuple[str, ...] = ()
    """Integer headers it carries (Retry-After)."""


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    path: str
    summary: str
    credential: Credential
    answers: Mapping[int, Answer]
    body: type[BaseModel] | None = None
    """The JSON body the handler receives parsed (a ValidationError is a 400 naming the field)."""
    content: Mapping[str, tuple[type[BaseModel], ...] | None] = field(default_factory=dict)
    """A body the handler parses itself, by media type: its models (several: one of them), or None for text."""
    query: type[BaseModel] | None = None
    path_params: Mapping[str, str] = field(default_factory=dict)
    """Path parameter -> its description."""
    header_params: Mapping[str, str] = field(default_factory=dict)
    """Optional request header -> its description."""

    @property
    def responses(self) -> dict[int, Answer]:
        """`answers` with those every operation of its kind gives."""
        out = dict(self.answers)
        if self.body is not None or self.content or self.query is not None:
            out.setdefault(400, Answer("The body or query is malformed; `error` names the field", Error))
        if self.body is not None or self.content:
            out.setdefault(413, Answer("The body is larger than 1 MiB", Error))
        if self.credential != "none":
            out[401] = Answer("No bearer token, a wrong one, or no credential is configured (audited)",
                              Unauthorized)
        return out


def document(operations: Iterable[Operation]) -> Schema:
    """The OpenAPI 3.1 document of `operations` (plus `GET /openapi.json` itself)."""
    operations = [*operations, OPENAPI_OPERATION]
    inputs: set[type[BaseModel]] = set()
    outputs: set[type[BaseModel]] = set()
    for op in operations:
        inputs.update(m for m in (op.body, op.query) if m is not None)
        inputs.update(m for models in op.content.values() for m in models or ())
        outputs.update(a.model for a in op.responses.values() if a.model is not None)
    pairs: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        *((m, "validation") for m in sorted(inputs, key=lambda m: m.__name__)),
        *((m, "serialization") for m in sorted(outputs, key=lambda m: m.__name__))]
    keys, defs = models_json_schema(pairs, ref_template=REF)
    schemas: dict[str, Schema] = defs.get("$defs", {})

    def ref(model: type[BaseModel], mode: JsonSchemaMode) -> Schema:
        return dict(keys[(model, mode)])

    paths: dict[str, dict[str, Schema]] = {}
    for op in operations:
        item: Schema = {"summary": op.summary, "security": SECURITY[op.credential]}
        parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"},
                       "description": about} for name, about in op.path_params.items()]
        parameters += [{"name": name, "in": "header", "required": False, "schema": {"type": "string"},
                        "description": about} for name, about in op.header_params.items()]
        if op.query is not None:
            parameters += _query_parameters(schemas[op.query.__name__])
        if parameters:
            item["parameters"] = parameters
        if op.body is not None:
            item["requestBody"] = {"required": True,
                                   "content": {"application/json": {"schema": ref(op.body, "validation")}}}
        elif op.content:
            item["requestBody"] = {"required": True, "content": {
                media: {"schema": _one_of([ref(m, "validation") for m in models]) if models else {"type": "string"}}
                for media, models in op.content.items()}}
        item["responses"] = {str(status): _answer(answer, ref) for status, answer in sorted(op.responses.items())}
        paths.setdefault(op.path, {})[op.method.lower()] = item
    for op in operations:  # described as parameters, not as a body anyone sends
        if op.query is not None:
            schemas.pop(op.query.__name__, None)
    return {
        "openapi": "3.1.0",
        "info": {"title": "agent-runner supervisor", "version": "1",
                 "description": "The owner's API to a policy-gated coding agent: tasks, pull requests, the policy, "
                                "alerts, the audit log."},
        "security": SECURITY["owner"],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "ownerToken": {"type": "http", "scheme": "bearer", "description": "The owner's token, AGENT_API_TOKEN"},
                "alertSecret": {"type": "http", "scheme": "bearer",
                                "description": "ALERT_WEBHOOK_SECRET; accepted only by /agent/auto-fix"},
            },
        },
    }


def _one_of(refs: list[Schema]) -> Schema:
    return refs[0] if len(refs) == 1 else {"oneOf": refs}


def _answer(answer: Answer, ref: Any) -> Schema:
    out: Schema = {"description": answer.description}
    if answer.media is not None:
        out["content"] = {answer.media: {"schema": {"type": "string"}}}
    else:
        schema = ref(answer.model, "serialization") if answer.model is not None else {"type": "object"}
        out["content"] = {"application/json": {"schema": schema}}
    if answer.headers:
        out["headers"] = {name: {"schema": {"type": "integer"}} for name in answer.headers}
    return out


def _query_parameters(schema: Schema) -> list[Schema]:
    """A query model's fields as query parameters (a list is a repeated parameter: `?state=a&state=b`)."""
    required = set(schema.get("required", ()))
    out = []
    for name, prop in schema["properties"].items():
        # An optional parameter is one left out, not one sent as "null".
        if [t for t in prop.get("anyOf", ()) if t.get("type") == "null"]:
            kept = [t for t in prop["anyOf"] if t.get("type") != "null"]
            prop = {k: v for k, v in prop.items() if k not in ("anyOf", "default")} | kept[0]
        param: Schema = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if prop.get("type") == "array":
            param |= {"style": "form", "explode": True}
        out.append(param)
    return out


OPENAPI_OPERATION = Operation("GET", "/openapi.json", "This document", "none",
                              {200: Answer("The OpenAPI description")})


def openapi_route(operations: Iterable[Operation]) -> Route:
    """`GET /openapi.json`: the description of `operations`, without auth (it holds no secrets)."""
    operations = list(operations)
    built: list[Schema] = []

    async def openapi_json(request: Request) -> Response:
        # Built at the first request, not at start-up: generating it builds every model's schema (~0.1 s), and
        # the models themselves defer building their validators until first used.
        if not built:
            built.append(document(operations))
        return JSONResponse(built[0])

    return Route(OPENAPI_OPERATION.path, openapi_json, methods=[OPENAPI_OPERATION.method])
