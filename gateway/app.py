"""The gateway's HTTP face: the model API routes an agent calls, forwarded upstream.

Each route forwards to the provider's base URL with the gateway's own credential; whatever
credential the agent sent is dropped, so no key ever has to enter a container. Answers stream
back chunk by chunk as they arrive while a ``UsageReader`` counts their tokens; the call is
written to the task's ledger before the answer's last byte goes out, so the agent's next call
is checked against a budget that already includes this one.

Which task a call belongs to is not in the request: every task has a socket of its own and the
server on it wraps this app in ``ForTask``, so one task cannot spend another's budget.

The same socket is the Worker's way to the package caches (stack/registries.py):
``/registry/pypi/<path>`` and ``/registry/npm/<path>`` are streamed to proxpi and verdaccio as
they are, with the Host the Worker used (the links the caches write lead back this way), and each
request is logged with its task. The Worker sends no credential; a private upstream's token is
the cache's own.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Protocol

import anyio
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from core.logging import get_logger
from db.tables import ModelUsage
from gateway.prices import PriceTable
from gateway.settings import GatewaySettings
from gateway.usage import Provider, Usage, UsageReader

log = get_logger("gateway")

TASK_KEY = "orchestrator.task_id"

# Never forwarded upstream: hop-by-hop headers, what httpx sets itself, and every credential.
_DROP_REQUEST = {
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "accept-encoding",
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "cookie",
}
# Never passed back: hop-by-hop headers and what no longer holds once the body is re-chunked.
_DROP_RESPONSE = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-encoding",
    "set-cookie",
}


# Never passed back from a cache: hop-by-hop headers. The body is relayed raw, so its length and
# encoding still hold.
_DROP_REGISTRY_RESPONSE = {"connection", "keep-alive", "transfer-encoding", "set-cookie"}
REGISTRY_PREFIX = "/registry/"


class Accounts(Protocol):
    """What the proxy asks of the ledger (``Gateway`` implements it)."""

    def serving(self, task_id: str) -> bool: ...

    def refusal(self, task_id: str) -> str | None: ...

    async def record(self, task_id: str, row: ModelUsage) -> None: ...


class ForTask:
    """The app as one task's socket serves it: every request is that task's."""

    def __init__(self, app: ASGIApp, task_id: str) -> None:
        self.app = app
        self.task_id = task_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app({**scope, TASK_KEY: self.task_id}, receive, send)


def error_response(
    provider: Provider, status: int, kind: str, message: str, code: str | None = None
) -> JSONResponse:
    """An error in the provider's own format, so the agent's CLI reports it as it would theirs."""
    body: dict[str, Any]
    if provider is Provider.anthropic:
        body = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status_code=status)


def refusal_response(provider: Provider, message: str) -> JSONResponse:
    # 400, not 429: the CLIs retry 429s for minutes, and this refusal will not go away. It is
    # the status both APIs use for an exhausted credit balance.
    response = error_response(
        provider, 400, "invalid_request_error", message, code="budget_exceeded"
    )
    response.headers["x-orchestrator-refused"] = "budget"
    return response


def upstream_url(base_url: str, path: str) -> str:
    base = base_url.rstrip("/")
    if base.endswith("/v1") and path.startswith("/v1/"):
        base = base[: -len("/v1")]  # a base URL given the OpenAI-SDK way, with its /v1
    return base + path


def _model_of(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return ""
    model = data.get("model") if isinstance(data, dict) else None
    return model[:200] if isinstance(model, str) else ""


class Proxy:
    def __init__(
        self,
        settings: GatewaySettings,
        http: httpx.AsyncClient,
        prices: PriceTable,
        accounts: Accounts,
    ) -> None:
        self.settings = settings
        self.http = http
        self.prices = prices
        self.accounts = accounts

    def _upstream_headers(self, request: Request, provider: Provider) -> dict[str, str]:
        headers = {
            name: value
            for name, value in request.headers.items()
            if name not in _DROP_REQUEST and not name.startswith("proxy-")
        }
        headers["accept-encoding"] = "identity"  # streams stay byte-for-byte and readable
        if provider is Provider.anthropic:
            headers.setdefault("anthropic-version", self.settings.anthropic_version)
            if self.settings.anthropic_api_key is not None:
                headers["x-api-key"] = self.settings.anthropic_api_key.get_secret_value()
        elif self.settings.openai_api_key is not None:
            key = self.settings.openai_api_key.get_secret_value()
            headers["authorization"] = f"Bearer {key}"
        return headers

    def _base_url(self, provider: Provider) -> str:
        if provider is Provider.anthropic:
            return self.settings.anthropic_base_url
        return self.settings.openai_base_url

    async def forward(self, request: Request, provider: Provider, *, metered: bool) -> Response:
        task_id: str = request.scope[TASK_KEY]
        body = await request.body()
        endpoint = request.url.path
        row = ModelUsage(
            task_id=task_id, provider=provider.value, model=_model_of(body), endpoint=endpoint
        )
        if not self.accounts.serving(task_id):
            # A call that races the task's close: nothing to count it against any more.
            message = "the gateway is closed for this task"
            return error_response(provider, 503, "api_error", message, code="gateway_closed")
        if metered and (reason := self.accounts.refusal(task_id)) is not None:
            row.refused, row.error, row.status_code = True, reason, 400
            log.warning("model call refused", task_id=task_id, provider=provider, reason=reason)
            await self.accounts.record(task_id, row)
            return refusal_response(provider, reason)

        url = upstream_url(self._base_url(provider), endpoint)
        outgoing = self.http.build_request(
            request.method,
            url,
            params=request.url.query or None,
            headers=self._upstream_headers(request, provider),
            content=body,
        )
        try:
            upstream = await self.http.send(outgoing, stream=True)
        except httpx.HTTPError as exc:
            message = f"the gateway could not reach {provider.value}: {type(exc).__name__}"
            log.error("upstream unreachable", task_id=task_id, provider=provider, error=str(exc))
            if metered:
                row.status_code, row.error = 502, message
                await self.accounts.record(task_id, row)
            return error_response(provider, 502, "api_error", message, code="upstream_error")

        headers = {
            name: value for name, value in upstream.headers.items() if name not in _DROP_RESPONSE
        }
        row.status_code = upstream.status_code
        reader = UsageReader(provider, row.model, upstream.headers.get("content-type", ""))
        chunks = self._relay(task_id, upstream, reader, row if metered else None)
        return StreamingResponse(chunks, status_code=upstream.status_code, headers=headers)

    async def _relay(
        self,
        task_id: str,
        upstream: httpx.Response,
        reader: UsageReader,
        row: ModelUsage | None,
    ) -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.aiter_bytes():
                if row is not None:
                    reader.feed(chunk)
                yield chunk
        except httpx.HTTPError as exc:
            if row is not None:
                row.error = f"the answer broke off: {type(exc).__name__}"
            raise  # the agent must see a broken answer, not a short one that looks whole
        finally:
            # Shielded: when the agent hangs up mid-answer this still runs to the end, so the
            # tokens the provider charges for are counted.
            with anyio.CancelScope(shield=True):
                await upstream.aclose()
                if row is not None:
                    await self._account(task_id, row, reader.finish())

    async def _account(self, task_id: str, row: ModelUsage, usage: Usage) -> None:
        row.model = usage.model or row.model
        row.tokens_in, row.tokens_out = usage.tokens_in, usage.tokens_out
        row.cache_read_tokens, row.cache_write_tokens = usage.cache_read, usage.cache_write
        if usage.seen:
            row.cost_usd = self.prices.cost(
                row.model,
                tokens_in=usage.tokens_in,
                tokens_out=usage.tokens_out,
                cache_read=usage.cache_read,
                cache_write=usage.cache_write,
            )
        elif row.error is None and row.status_code is not None and row.status_code < 300:
            row.error = "the answer reported no usage"
        await self.accounts.record(task_id, row)
        log.info(
            "model call",
            task_id=task_id,
            provider=row.provider,
            model=row.model,
            endpoint=row.endpoint,
            status=row.status_code,
            tokens_in=row.tokens_in,
            tokens_out=row.tokens_out,
            cost_usd=row.cost_usd,
        )


class RegistryProxy:
    """A Worker's package requests, streamed to the cache its path names."""

    def __init__(self, settings: GatewaySettings, http: httpx.AsyncClient) -> None:
        self.registries = settings.registries
        self.http = http

    async def forward(self, request: Request) -> Response:
        task_id: str = request.scope[TASK_KEY]
        name = request.path_params["name"]
        # The raw path: a scoped npm package's %2F must reach verdaccio as the client sent it.
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        _, _, rest = raw_path.decode("latin-1").removeprefix(REGISTRY_PREFIX).partition("/")
        rest = f"/{rest}"
        where = {"task_id": task_id, "registry": name, "method": request.method, "path": rest}
        base = self.registries.get(name)
        if base is None:
            log.warning("registry request refused", status=404, **where)
            known = ", ".join(f"{REGISTRY_PREFIX}{known}/" for known in self.registries)
            return PlainTextResponse(
                f"no package registry {name!r} here; the registries are {known}\n", 404
            )
        query = request.url.query
        url = base.rstrip("/") + rest + (f"?{query}" if query else "")
        headers = {
            key: value
            for key, value in request.headers.items()
            if key not in _DROP_REQUEST or key in ("host", "accept-encoding")
        }
        # A body only where one is sent: a streamed one would make a GET chunked.
        body = request.stream() if request.method == "POST" else None
        outgoing = self.http.build_request(request.method, url, headers=headers, content=body)
        try:
            upstream = await self.http.send(outgoing, stream=True)
        except httpx.HTTPError as exc:
            log.error("registry unreachable", error=str(exc), **where)
            message = f"the {name} cache is not reachable: {type(exc).__name__}\n"
            return PlainTextResponse(message, 502)
        log.info("registry request", status=upstream.status_code, **where)
        headers = {
            key: value
            for key, value in upstream.headers.items()
            if key not in _DROP_REGISTRY_RESPONSE
        }
        return StreamingResponse(
            _relay_raw(upstream), status_code=upstream.status_code, headers=headers
        )


async def _relay_raw(upstream: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    finally:
        with anyio.CancelScope(shield=True):
            await upstream.aclose()


def _provider_of_listing(request: Request) -> Provider:
    # GET /v1/models exists at both providers; Anthropic clients always name an API version.
    if "anthropic-version" in request.headers or "x-api-key" in request.headers:
        return Provider.anthropic
    return Provider.openai


def build_app(proxy: Proxy, registries: RegistryProxy | None = None) -> Starlette:
    async def root(_: Request) -> Response:
        # Claude Code checks that its base URL answers before the first call.
        return Response(status_code=200)

    def route(path: str, provider: Provider, *, metered: bool = True) -> Route:
        async def endpoint(request: Request) -> Response:
            return await proxy.forward(request, provider, metered=metered)

        return Route(path, endpoint, methods=["POST"])

    async def models(request: Request) -> Response:
        return await proxy.forward(request, _provider_of_listing(request), metered=False)

    registry = registries or RegistryProxy(proxy.settings, proxy.http)
    # Reading only (POST: npm's bulk queries): a Worker neither publishes nor clears a cache.
    methods = ["GET", "HEAD", "POST"]
    return Starlette(
        routes=[
            Route("/registry/{name}/{path:path}", registry.forward, methods=methods),
            Route("/registry/{name}", registry.forward, methods=methods),
            Route("/", root, methods=["GET", "HEAD"]),
            route("/v1/messages", Provider.anthropic),
            route("/v1/messages/count_tokens", Provider.anthropic, metered=False),
            route("/v1/responses", Provider.openai),
            route("/v1/responses/compact", Provider.openai),
            route("/v1/chat/completions", Provider.openai),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/models/{model_id:path}", models, methods=["GET"]),
        ]
    )
