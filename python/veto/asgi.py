"""ASGI middleware (Starlette, FastAPI, any ASGI app): every HTTP request
is decided by a :class:`veto.Authorizer` before the app sees it."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

from . import _veto

Scope = Dict[str, Any]
Receive = Callable[[], Awaitable[Dict[str, Any]]]
Send = Callable[[Dict[str, Any]], Awaitable[None]]

class VetoMiddleware:
    """Decides each HTTP request with ``authorizer``: the credential from
    ``Authorization`` (``DPoP``, or ``Bearer`` when the policy allows) and
    the ``DPoP`` proof under veto's own header rules, ``htu`` from the
    scheme, the one ``Host`` and the path (as veto's proxy builds it), and the action from ``action(scope)``
    (default ``http:METHOD:PATH``). A denial is answered like the proxy:
    ``{"error": reason, "message": text}`` with 401/403/503 and, for proof
    errors, ``WWW-Authenticate: DPoP``. An allowed request reaches the app
    with ``scope["state"]["veto"]`` set to the :class:`veto.Decision`.
    Other scope types (websocket, lifespan) pass through unchanged when
    ``only_http`` (default), or are refused."""

    def __init__(self, app: Callable[..., Awaitable[None]], authorizer: Any, action: Optional[Callable[[Scope], str]] = None, only_http: bool = True) -> None:
        self.app = app
        self.authorizer = authorizer
        self.action = action or (lambda scope: f"http:{scope['method']}:{scope['veto_path']}")
        self.only_http = only_http

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: List[Tuple[bytes, bytes]] = scope.get("headers", [])
        values = lambda name: [v for k, v in headers if k.lower() == name]  # noqa: E731
        hosts = values(b"host")
        if len(hosts) > 1:
            await self._deny(send, "malformed", "more than one Host header", None)
            return
        host = hosts[0].decode("latin-1") if hosts else (f"{scope['server'][0]}:{scope['server'][1]}" if scope.get("server") else "localhost")
        # The path as sent (`raw_path`; `path` is already decoded), in the
        # one canonical form the proxy uses. A request whose path is not
        # already canonical (dot segments, encoded unreserved characters)
        # is refused: the app must see exactly the path that was authorized.
        raw = scope.get("raw_path")
        sent = raw.decode("latin-1") if isinstance(raw, (bytes, bytearray)) else urllib.parse.quote(scope["path"], safe="/:@!$&'()*+,;=-._~%")
        sent = sent.split("?", 1)[0]
        try:
            path = _veto.canonical_path(sent)
        except ValueError as e:
            await self._deny(send, "malformed", f"request path: {e}", None)
            return
        if path != sent:
            await self._deny(send, "malformed", f"the path `{sent[:128]}` is not in canonical form (`{path[:128]}`): send that", None)
            return
        url = f"{scope.get('scheme', 'http')}://{host}{path}"
        scope = dict(scope)
        scope["veto_path"] = path
        try:
            action = self.action(scope)
        except Exception as e:  # an action the app cannot name is a malformed request
            await self._deny(send, "malformed", f"no action for this request: {e}", None)
            return
        try:
            decision = self.authorizer.check_headers(values(b"authorization"), values(b"dpop"), scope["method"], url, action)
        except ValueError as e:  # a URL the authorizer cannot canonicalize
            await self._deny(send, "malformed", str(e), None)
            return
        if not decision.allowed:
            await self._deny(send, decision.reason or "malformed", decision.message or "denied", decision.pop_error)
            return
        scope.setdefault("state", {})["veto"] = decision
        await self.app(scope, receive, send)

    async def _deny(self, send: Send, reason: str, message: str, pop_error: Optional[str]) -> None:
        body = json.dumps({"error": reason, "message": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if pop_error is not None:
            headers.append((b"www-authenticate", f'DPoP algs="EdDSA", error="{pop_error}"'.encode()))
        await send({"type": "http.response.start", "status": _veto.deny_status(reason), "headers": headers})
        await send({"type": "http.response.body", "body": body})


__all__ = ["VetoMiddleware"]
