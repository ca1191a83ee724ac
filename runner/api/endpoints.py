"""What every endpoint shares, written once: its credential checked (and a refusal audited), its body and query
parsed through its models, the error tree mapped to statuses in today's error shape.

A handler is registered with `@api(...)`, which records its `Operation` (runner.api.openapi) beside it:

    @api("POST", "/agent/reject-pr", "Close the agent's pull request", body=Reject, answers={200: ...})
    async def reject_pr(request: Request, body: Reject) -> Response: ...

The handler receives the parsed body, then the parsed query, as positional arguments after the request
(tests/test_openapi.py checks each handler's annotations name its operation's models). It never checks a
credential, audits a refusal or maps an error itself.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar, get_origin

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import policy
from runner.alerts.payload import MAX_BODY_BYTES
from runner.api.openapi import Answer, Credential, Operation
from runner.api.schemas import RateLimited, Refusal, Unauthorized
from runner.errors import (
    ForgeConflict,
    ForgeError,
    ForgeNotFound,
    OperationError,
    PolicyVersionNotFound,
    TaskError,
    TaskNotFound,
)
from runner.errors import RateLimited as RateLimitedError
from runner.service import operations
from runner.service.operations import Caller
from runner.service.state import Service

Endpoint = Callable[[Request], Awaitable[Response]]
Handler = Callable[..., Awaitable[Response]]
M = TypeVar("M", bound=BaseModel)
H = TypeVar("H", bound=Handler)


class BadRequest(OperationError):
    """The request itself is malformed (HTTP 400, or 413 for a body too large)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Registered:
    """The operations registered so far, in order, each with its handler."""

    def __init__(self) -> None:
        self.entries: list[tuple[Operation, Handler, int]] = []

    def __call__(self, method: str, path: str, summary: str, credential: Credential = "owner", *,
                 answers: Mapping[int, Answer], body: type[BaseModel] | None = None,
                 content: Mapping[str, tuple[type[BaseModel], ...] | None] | None = None,
                 query: type[BaseModel] | None = None, path_params: Mapping[str, str] | None = None,
                 header_params: Mapping[str, str] | None = None, forge_failure: int = 502) -> Callable[[H], H]:
        """Register the decorated handler as `method path`; `forge_failure` is the status of a ForgeError that
        is not a 404 or 409 (the forge failed: 502, unless the operation documents it otherwise)."""
        op = Operation(method, path, summary, credential, answers, body=body, content=content or {}, query=query,
                       path_params=path_params or {}, header_params=header_params or {})

        def register(handler: H) -> H:
            self.entries.append((op, handler, forge_failure))
            return handler

        return register

    @property
    def operations(self) -> list[Operation]:
        return [op for op, _, _ in self.entries]

    def routes(self) -> list[Route]:
        return [Route(op.path, endpoint(op, handler, forge_failure), methods=[op.method])
                for op, handler, forge_failure in self.entries]


api = Registered()


def endpoint(op: Operation, handler: Handler, forge_failure: int = 502) -> Endpoint:
    """`handler` as a Starlette endpoint: authenticated, parsed, and its errors answered, as `op` says."""

    async def answer(request: Request) -> Response:
        if op.credential != "none" and (denied := await authenticated(request, op.credential)) is not None:
            return denied
        try:
            args: list[BaseModel] = []
            if op.body is not None:
                args.append(parse(op.body, await body_of(request)))
            if op.query is not None:
                args.append(parse_query(op.query, request))
            return await handler(request, *args)
        except BadRequest as exc:
            return error(exc.status, str(exc))
        except (OperationError, ForgeError, policy.PolicyLoadError) as exc:
            return failed(exc, forge_failure=forge_failure)

    answer.__name__ = handler.__name__
    answer.__doc__ = handler.__doc__
    return answer


def owner_only(handler: Endpoint) -> Endpoint:
    """`handler` behind the owner's bearer token (AGENT_API_TOKEN), refusals audited: for routes other modules
    serve beside the API (a task page)."""
    return endpoint(Operation("GET", "", "", "owner", {}), handler)


def service_of(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def caller_of(request: Request) -> Caller:
    client = request.client.host if request.client else ""
    return Caller("owner", "api", {"path": request.url.path, "client": client})


def render(model: BaseModel, status: int = 200, headers: Mapping[str, str] | None = None, *,
           exclude_none: bool = False) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json", exclude_none=exclude_none), status_code=status,
                        headers=headers)


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


async def authenticated(request: Request, credential: Credential) -> Response | None:
    """None when the bearer matches the route's secret (constant time); else the audited 401."""
    settings = service_of(request).settings
    secret, actor = ((settings.api_token, "api") if credential == "owner"
                     else (settings.alert_webhook_secret, "alertmanager"))
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    ok = (secret is not None and scheme.lower() == "bearer"
          and hmac.compare_digest(presented.strip().encode(), secret.reveal().encode()))
    if ok:
        return None
    reason: Refusal = ("no credential configured" if secret is None
                       else "no bearer token" if not presented else "bad token")
    who = caller_of(request)
    await operations.refuse(service_of(request).store, Caller(actor, who.source, who.where), reason)
    return render(Unauthorized(error="unauthorized", reason=reason), 401)


def failed(exc: Exception, *, forge_failure: int = 502) -> JSONResponse:
    """The one mapping of the error tree to HTTP statuses (and today's error shape)."""
    if isinstance(exc, RateLimitedError):
        return render(RateLimited(error="rate_limited", limit=exc.limit, retry_after=exc.retry_after), 429,
                      headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, TaskNotFound):
        return error(404, "no such task")
    if isinstance(exc, PolicyVersionNotFound):
        return error(404, "no such policy version")
    if isinstance(exc, ForgeNotFound):
        return error(404, str(exc))
    if isinstance(exc, ForgeConflict | TaskError):
        return error(409, str(exc))
    if isinstance(exc, ForgeError):
        return error(forge_failure, str(exc))
    if isinstance(exc, policy.PolicyLoadError):
        return error(422, str(exc))
    raise exc


async def body_of(request: Request) -> bytes:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise BadRequest("body too large", 413)
    return raw


def parse(model: type[M], raw: bytes | str) -> M:
    """`raw` JSON as `model`; a BadRequest naming each field that is wrong (never echoing the input)."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise BadRequest(_problems(exc)) from None


def parse_query(model: type[M], request: Request) -> M:
    """The query string as `model`: a list field takes every value of its name (`?state=a&state=b`)."""
    data: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        values = request.query_params.getlist(name)
        if values:
            data[name] = values if get_origin(info.annotation) is list else values[-1]
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(f"bad query: {_problems(exc)}") from None


def _problems(exc: ValidationError) -> str:
    shown = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors(include_input=False)]
    return "; ".join(shown[:5]) + (f"; and {len(shown) - 5} more" if len(shown) > 5 else "")

