"""veto for Python: agents mint, delegate and sign requests; services
enforce revocation in-process.

The formats and rules (keys, warrant chains, DPoP proofs per RFC 9449, the
authorizer with its push/poll sync and staleness policy) are veto's own
Rust code, through a native module; this package adds the Python idioms::

    import requests, veto
    reg = veto.Registry("http://127.0.0.1:8080", token=TOKEN)
    planner, worker = veto.Key.generate(), veto.Key.generate()
    root = reg.mint(agent="planner", act=["http:*:/orders/*"], ttl=3600, holder=planner.public)
    child = root.delegate(planner, agent="worker", act=["http:GET:/orders/*"], ttl=600, to=worker.public)
    requests.get(url, auth=veto.DPoPAuth(child, worker))
    reg.revoke("warrant", root.jti, reason="key_compromise")

Times are Unix seconds and durations seconds, as in JWT.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Union

from . import _veto
from . import errors
from .errors import Denied, VetoError

__version__: str = _veto.__version__

PathLike = Union[str, "os.PathLike[str]"]


class Key:
    """An Ed25519 key (RFC 8037 JWK): a holder's, an issuer's, a gateway's."""

    __slots__ = ("_key",)

    def __init__(self, native: Any) -> None:
        self._key = native

    @classmethod
    def generate(cls) -> "Key":
        """A new random key."""
        return cls(_veto.Key.generate())

    @classmethod
    def load(cls, path: PathLike) -> "Key":
        """Reads a private JWK file (as ``veto keys generate`` writes). Raises
        ``ValueError`` naming what is wrong with it."""
        return cls(_veto.Key.load(os.fspath(path)))

    @classmethod
    def from_jwk(cls, jwk: Union[str, Mapping[str, Any]]) -> "Key":
        """A key from a private JWK (a dict or its JSON text)."""
        text = jwk if isinstance(jwk, str) else json.dumps(dict(jwk))
        return cls(_veto.Key.from_jwk(text))

    def save(self, path: PathLike) -> None:
        """Writes the private JWK to a new file, mode 0600 (refuses to
        overwrite one)."""
        self._key.save(os.fspath(path))

    @property
    def kid(self) -> str:
        """The RFC 7638 thumbprint of the public key."""
        return self._key.kid

    @property
    def public(self) -> Dict[str, Any]:
        """The public JWK, as a dict (what ``holder=`` and ``to=`` take)."""
        return json.loads(self._key.public_jwk())

    def __repr__(self) -> str:
        return f"Key(kid={self.kid!r})"


def _actions(act: Sequence[str]) -> List[str]:
    # A str is a sequence of one-character strings, and `*` alone permits
    # everything: never take one as a list of actions.
    if isinstance(act, (str, bytes)):
        raise TypeError("act is a list of action patterns, such as [\"http:GET:/orders/*\"], not a string")
    out = list(act)
    if not all(isinstance(a, str) for a in out):
        raise TypeError("every action pattern in act is a str")
    return out


def _seconds(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} is a whole number of seconds")
    if not 0 < value <= 10 * 366 * 86400:
        raise ValueError(f"{what} must be 1 s to 10 years, not {value}")
    return value


def _jwk_text(key: Union[None, "Key", Mapping[str, Any], str]) -> Optional[str]:
    if key is None:
        return None
    if isinstance(key, Key):
        return key._key.public_jwk()
    if isinstance(key, str):
        return key
    return json.dumps(dict(key))


class Chain:
    """A warrant chain, root first (``root~child~...~leaf``), as presented in
    ``Authorization: DPoP <chain>``. ``str(chain)`` is the chain itself."""

    __slots__ = ("_text", "_links")

    def __init__(self, text: str) -> None:
        text = text.strip()
        if text.startswith("DPoP "):
            text = text[5:].strip()
        self._links: List[Dict[str, Any]] = json.loads(_veto.links(text))
        self._text = text

    @property
    def links(self) -> List[Dict[str, Any]]:
        """Each link's claims (``jti``, ``iss``, ``sub``, ``iat``, ``nbf``,
        ``exp``, ``act``, ``cnf``, ``par``), root first; read without
        verifying anything."""
        return [dict(link) for link in self._links]

    @property
    def jti(self) -> str:
        """The leaf link's ``jti`` (revoking it revokes this chain)."""
        return self._links[-1]["jti"]

    @property
    def root_jti(self) -> str:
        """The root link's ``jti`` (revoking it revokes every descendant)."""
        return self._links[0]["jti"]

    @property
    def agent(self) -> str:
        """The leaf's agent (``sub``)."""
        return self._links[-1]["sub"]

    def delegate(
        self,
        holder: Key,
        agent: str,
        act: Sequence[str],
        ttl: int,
        to: Union[None, Key, Mapping[str, Any], str] = None,
    ) -> "Chain":
        """A narrower child for ``agent``, signed offline with ``holder`` (the
        key this chain's leaf binds), valid ``ttl`` seconds, bound to ``to``
        (the child holder's public key). Raises ``ValueError`` when the child
        would widen the actions or outlive this chain."""
        return Chain(_veto.delegate(self._text, holder._key, agent, _actions(act), _seconds(ttl, "ttl"), _jwk_text(to)))

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"Chain(agent={self.agent!r}, jti={self.jti!r}, depth={len(self._links)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Chain) and other._text == self._text

    def __hash__(self) -> int:
        return hash(self._text)


def mint_offline(issuer: Key, agent: str, act: Sequence[str], ttl: int, holder: Union[None, Key, Mapping[str, Any]] = None, iss: str = "veto") -> Chain:
    """A root warrant signed by ``issuer`` without a registry (for tests and
    closed setups; authorizers must pin that issuer key)."""
    return Chain(_veto.mint_offline(issuer._key, iss, agent, _actions(act), _seconds(ttl, "ttl"), _jwk_text(holder)))


def canonical_htu(url: str) -> str:
    """The canonical form of a request URL for DPoP ``htu`` (RFC 9449 4.3),
    as veto's proxy builds it."""
    return _veto.canonical_htu(url)


def dpop_proof(chain: Union[Chain, str], key: Key, method: str, url: str, nonce: Optional[str] = None) -> str:
    """A fresh DPoP proof (RFC 9449) for one request."""
    return _veto.dpop_proof(str(chain), key._key, method.upper(), url, nonce)


class DPoPAuth:
    """Signs every request with a fresh DPoP proof (RFC 9449) by the chain's
    leaf holder key: ``Authorization: DPoP <chain>`` and ``DPoP: <proof>``.

    Works as ``auth=`` for ``requests`` and for ``httpx`` (sync and async
    clients): both call it with the request to send. ``nonce`` is a server
    nonce (``DPoP-Nonce``) to put in the proofs, when the server asks for
    one."""

    def __init__(self, chain: Union[Chain, str], key: Key, nonce: Optional[str] = None) -> None:
        self.chain = str(chain)
        self.key = key
        self.nonce = nonce

    def __call__(self, request: Any) -> Any:
        url = str(request.url)
        proof = _veto.dpop_proof(self.chain, self.key._key, str(request.method).upper(), url, self.nonce)
        request.headers["Authorization"] = "DPoP " + self.chain
        request.headers["DPoP"] = proof
        return request


Decision = _veto.Decision
Decision.__doc__ = """What the authorizer decided (made natively): ``allowed``; when denied,
``reason`` (a veto denial reason such as ``revoked``) and ``message``;
``stale`` when only the fail-open policy let it through; ``pop_error`` the
RFC 9449 error for ``WWW-Authenticate`` when the proof was refused. True
when allowed; ``raise_for_denial()`` raises the :class:`veto.errors.Denied`
subclass of the reason."""


class Authorizer:
    """veto's authorizer in this process, on its own threads: verifies chains
    and proofs, keeps the revocation state in sync with ``registry`` by push
    (SSE, or a ``nats://`` URL) and polling, and applies the staleness
    policy. ``check`` never waits on the network.

    ``registry`` is required: an authorizer without a revocation source
    would enforce no revocation, so construction fails instead.
    ``authority_key`` is the registry's authority public key (a JWK file
    path such as ``<data-dir>/authority.pub.jwk``, a dict, or JSON text):
    pinned, never fetched. ``pop`` is ``"required"`` (default),
    ``"optional"`` or ``"off"`` (for chains handed over in-process, where
    there is no request to prove)."""

    def __init__(
        self,
        registry: Optional[str] = None,
        authority_key: Union[None, PathLike, Mapping[str, Any]] = None,
        *,
        iss: str = "veto",
        pop: str = "required",
        policy: str = "fail-closed",
        max_staleness: int = 300,
        poll_interval: int = 60,
        push: str = "sse",
        cache_dir: Optional[PathLike] = None,
        ca_file: Optional[PathLike] = None,
        wait_fresh: float = 10.0,
    ) -> None:
        if not registry:
            raise ValueError("veto.Authorizer needs registry=URL: without a revocation source it would enforce no revocation")
        if authority_key is None:
            raise ValueError("veto.Authorizer needs authority_key= (the registry's <data-dir>/authority.pub.jwk): it is pinned, never fetched")
        if isinstance(authority_key, Mapping):
            jwk = json.dumps(dict(authority_key))
        elif isinstance(authority_key, str) and authority_key.lstrip().startswith("{"):
            jwk = authority_key
        else:
            with open(os.fspath(authority_key), encoding="utf-8") as f:
                jwk = f.read()
        try:
            has_private = "d" in json.loads(jwk)
        except ValueError:
            raise ValueError("authority_key is not a JWK (JSON)") from None
        if has_private:
            raise ValueError("authority_key holds a private key: pin the public half (<data-dir>/authority.pub.jwk); a service must never hold it")
        _seconds(max_staleness, "max_staleness")
        _seconds(poll_interval, "poll_interval")
        self._native = _veto.Authorizer(
            registry,
            jwk,
            iss=iss,
            pop=pop,
            policy=policy,
            max_staleness=int(max_staleness),
            poll_interval=int(poll_interval),
            push=push,
            cache_dir=None if cache_dir is None else os.fspath(cache_dir),
            ca_file=None if ca_file is None else os.fspath(ca_file),
        )
        self.pop = pop
        self._check = self._native.check
        deadline = time.monotonic() + wait_fresh
        while wait_fresh > 0 and not self.status()["fresh"] and time.monotonic() < deadline:
            time.sleep(0.02)
        status = self.status()
        if wait_fresh > 0 and not status["fresh"]:
            import warnings

            warnings.warn(
                f"veto.Authorizer is not in sync with {registry} after {wait_fresh} s, so it denies every request "
                f"(fail-closed) until it is; last error: {status.get('last_error') or 'none yet'}",
                RuntimeWarning,
                stacklevel=2,
            )

    def check(
        self,
        chain: Union[Chain, str],
        action: str,
        dpop: Optional[str] = None,
        method: Optional[str] = None,
        url: Optional[str] = None,
    ) -> Decision:
        """Decides ``chain`` for ``action`` (such as ``http:GET:/orders/7``).
        With ``dpop`` (the request's ``DPoP`` header), ``method`` and ``url``
        (as the request was addressed) the proof of possession is checked;
        without them the chain is a bearer token, denied ``pop_required``
        unless ``pop="off"``."""
        return self._check(chain, action, dpop, method, url)

    def check_headers(self, authorization: List[bytes], dpop: List[bytes], method: str, url: str, action: str) -> Decision:
        """Decides an HTTP request from every value of its ``Authorization``
        and ``DPoP`` headers (veto's rules: exactly one credential, at most
        one proof), its method and URL as addressed, and ``action``."""
        return self._native.check_headers(list(authorization), list(dpop), method, url, action)

    def status(self) -> Dict[str, Any]:
        """The sync state: ``version``, ``head``, ``fresh``, ``fresh_until``,
        ``age`` (seconds since the newest attestation), ``push_connected``,
        ``entries``, ``last_error``."""
        return json.loads(self._native.status())

    def metrics(self) -> str:
        """Prometheus metrics, text format."""
        return self._native.metrics()

    def sync_now(self) -> None:
        """Polls the registry once now."""
        self._native.sync_now()

    def close(self) -> None:
        """Stops syncing; checks go on against the last state (and turn stale)."""
        self._native.close()

    def __enter__(self) -> "Authorizer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Registry:
    """A veto registry's API: mint, revoke (with the admin or a scoped token,
    or as a holder), the audit log and the fleet. Errors raise the
    :mod:`veto.errors` class named after the registry's error code."""

    def __init__(self, url: str, token: Optional[str] = None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        if token is not None:
            token = token.strip()
            if not token or not all(33 <= ord(c) <= 126 for c in token):
                # Never repeat the token: it would end up in tracebacks and logs.
                raise ValueError("token must be visible ASCII characters (as read from admin.token, stripped)")
        self.token = token
        self.timeout = timeout

    def _call(self, method: str, path: str, body: Any = None, headers: Optional[Dict[str, str]] = None, auth: bool = True) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if auth and self.token:
            req.add_header("Authorization", "Bearer " + self.token)
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                text = resp.read()
                return json.loads(text) if text else None
        except urllib.error.HTTPError as e:
            text = e.read()
            try:
                err = json.loads(text)
                raise errors.error_for(err["error"], err["message"], e.code) from None
            except (ValueError, KeyError, TypeError):
                raise VetoError(f"HTTP {e.code}: {text[:200]!r}", code="http_error", status=e.code) from None
        except (urllib.error.URLError, OSError) as e:
            raise RegistryUnreachable(f"cannot reach the registry at {self.url}: {getattr(e, 'reason', e)}") from None

    def mint(self, agent: str, act: Sequence[str], ttl: int, holder: Union[Key, Mapping[str, Any]]) -> Chain:
        """A root warrant for ``agent`` (scope ``mint``), valid ``ttl`` seconds,
        bound to ``holder`` (the key that must prove every request)."""
        jwk = holder.public if isinstance(holder, Key) else dict(holder)
        r = self._call("POST", "/v1/warrants", {"agent": agent, "act": _actions(act), "ttl": _seconds(ttl, "ttl"), "holder_key": jwk})
        return Chain(r["warrant"])

    def revoke(
        self,
        kind: str,
        id: str,
        reason: str = "unspecified",
        *,
        before: Optional[int] = None,
        expires_at: Optional[int] = None,
        note: Optional[str] = None,
        wait: bool = False,
        timeout: float = 10.0,
    ) -> Dict[str, Any]:
        """Revokes a ``warrant`` (by ``jti``), an ``agent`` (credentials issued
        up to ``before``, default now) or a ``key`` (by thumbprint), with an
        RFC 5280 ``reason`` (scope ``revoke``). Returns the entry
        (``version``, ``created``). With ``wait=True``, then waits until
        every gateway that is not lost reports that version (scope
        ``fleet``); raises :class:`NotInForce` naming the laggards after
        ``timeout`` seconds."""
        entry: Dict[str, Any] = {"kind": kind, "id": id, "reason": reason}
        if kind == "agent":
            entry["before"] = int(time.time()) if before is None else int(before)
        elif before is not None:
            entry["before"] = int(before)
        if expires_at is not None:
            entry["expires_at"] = int(expires_at)
        if note is not None:
            entry["note"] = note
        r = self._call("POST", "/v1/revocations", {"entries": [entry]})
        result = dict(r["entries"][0])
        if wait:
            result["fleet"] = self.wait_for(result["version"], timeout)
        return result

    def revoke_as_holder(self, chain: Union[Chain, str], link: int, key: Key, reason: str = "unspecified", note: Optional[str] = None) -> Dict[str, Any]:
        """Revokes link ``link`` (0 = the root) of ``chain`` as a holder,
        without the admin token: proved with DPoP by ``key``, the key of that
        link or of one above it."""
        chain = str(chain)
        url = self.url + "/v1/revocations/delegated"
        proof = _veto.dpop_proof(chain, key._key, "POST", url, None)
        body: Dict[str, Any] = {"link": int(link), "reason": reason}
        if note is not None:
            body["note"] = note
        r = self._call("POST", "/v1/revocations/delegated", body, headers={"Authorization": "DPoP " + chain, "DPoP": proof}, auth=False)
        return dict(r["entries"][0])

    def audit(self, kind: Optional[str] = None, id: Optional[str] = None, actor: Optional[str] = None, since: Optional[int] = None, until: Optional[int] = None, limit: int = 100) -> Iterator[Dict[str, Any]]:
        """The audit log (scope ``audit``), oldest first, every page."""
        after = None
        while True:
            q = {k: v for k, v in {"kind": kind, "id": id, "actor": actor, "since": since, "until": until, "after": after, "limit": limit}.items() if v is not None}
            r = self._call("GET", "/v1/revocations?" + urllib.parse.urlencode(q))
            yield from r["items"]
            after = r.get("next")
            if after is None:
                return

    def fleet(self) -> Dict[str, Any]:
        """Every gateway and what it applied (scope ``fleet``)."""
        return self._call("GET", "/v1/fleet")

    def wait_for(self, version: int, timeout: float = 10.0) -> List[Dict[str, Any]]:
        """Waits until every gateway that is not lost now reports ``version``
        or later; returns each gateway's row. Raises :class:`NotInForce`."""
        first = self.fleet()["gateways"]
        waited = {g["id"]: g for g in first if g["state"] != "lost"}
        deadline = time.monotonic() + timeout
        while True:
            now = {g["id"]: g for g in self.fleet()["gateways"]}
            behind = [now.get(i, g) for i, g in waited.items() if (now.get(i, g).get("applied_version") or 0) < version]
            if not behind:
                return [now[i] for i in waited]
            if time.monotonic() >= deadline:
                raise NotInForce(version, behind)
            time.sleep(0.02)


class RegistryUnreachable(VetoError):
    """The registry could not be reached (refused, timed out, a bad URL)."""

    code = "registry_unreachable"


class NotInForce(VetoError):
    """A revocation's version was not reported by every gateway in time;
    ``laggards`` are their fleet rows."""

    code = "not_in_force"

    def __init__(self, version: int, laggards: List[Dict[str, Any]]) -> None:
        names = ", ".join(f"{g['name']} (applied {g.get('applied_version')}, {g['state']})" for g in laggards)
        super().__init__(f"version {version} is not in force at: {names}")
        self.version = version
        self.laggards = laggards


def require(authorizer: Authorizer, action: Union[str, Callable[..., str]], chain_arg: str = "veto_chain") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator for tools (an MCP server's, or any function) that an agent
    calls with its chain in the keyword argument ``chain_arg``: the call
    runs only when ``authorizer`` allows the chain for ``action`` (a string,
    or a function of the call's keyword arguments); otherwise the
    :class:`veto.errors.Denied` subclass of the reason is raised. The chain
    comes in-process, with no request to prove: use an authorizer with
    ``pop="off"``."""
    import functools
    import inspect

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        def decide(kwargs: Dict[str, Any]) -> None:
            chain = kwargs.pop(chain_arg, None)
            if chain is None:
                raise errors.error_for("pop_required" if authorizer.pop != "off" else "malformed", f"no chain: pass {chain_arg}=")
            act = action(**kwargs) if callable(action) else action
            authorizer.check(chain, act).raise_for_denial()

        def check_args(args: tuple) -> None:
            if args and callable(action):
                raise TypeError(f"{fn.__name__}: call it with keyword arguments; its action is computed from them")

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                check_args(args)
                decide(kwargs)
                return await fn(*args, **kwargs)
            return run_async

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            check_args(args)
            decide(kwargs)
            return fn(*args, **kwargs)
        return run

    return wrap


from .asgi import VetoMiddleware  # noqa: E402  (needs the names above)

__all__ = [
    "Authorizer", "Chain", "Decision", "Denied", "DPoPAuth", "Key", "NotInForce", "Registry", "RegistryUnreachable",
    "VetoError", "VetoMiddleware", "canonical_htu", "dpop_proof", "errors", "mint_offline", "require",
]
