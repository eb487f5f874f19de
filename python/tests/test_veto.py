"""The `veto` package against a real registry and a real proxy."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest
import requests

import veto
from veto import errors


def eventually(what, ok, within=10.0):
    deadline = time.monotonic() + within
    while True:
        value = ok()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.02)


@pytest.fixture()
def reg(services):
    return veto.Registry(services.registry, token=services.token)


@pytest.fixture()
def chains(reg):
    planner, worker = veto.Key.generate(), veto.Key.generate()
    root = reg.mint(agent="planner", act=["http:*:/orders/*"], ttl=3600, holder=planner.public)
    child = root.delegate(planner, agent="worker", act=["http:GET:/orders/*"], ttl=600, to=worker.public)
    return planner, worker, root, child


def test_keys_round_trip_through_a_0600_file(tmp_path: Path):
    key = veto.Key.generate()
    path = tmp_path / "k.jwk"
    key.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    again = veto.Key.load(path)
    assert again.kid == key.kid and again.public == key.public
    assert set(key.public) >= {"kty", "crv", "x"} and "d" not in key.public
    with pytest.raises(ValueError):
        key.save(path)  # never overwrites a key
    with pytest.raises(ValueError):
        veto.Key.load(tmp_path / "missing.jwk")


def test_mint_delegate_inspect(chains):
    planner, worker, root, child = chains
    assert len(root.links) == 1 and len(child.links) == 2
    assert child.links[0]["jti"] == root.jti == child.root_jti
    assert child.links[1]["par"] == root.jti
    assert child.agent == "worker" and child.links[1]["act"] == ["http:GET:/orders/*"]
    assert str(child).startswith(str(root) + "~")
    assert veto.Chain(str(child)) == child
    # Wider than the parent, or signed by a key the leaf does not bind: refused.
    with pytest.raises(ValueError, match="narrow"):
        child.delegate(worker, agent="x", act=["http:*:/orders/*"], ttl=60)
    with pytest.raises(ValueError):
        root.delegate(worker, agent="x", act=["http:GET:/orders/*"], ttl=60)


def test_requests_and_httpx_sign_each_request(services, chains):
    _, worker, _, child = chains
    url = services.proxy + "/orders/7"
    auth = veto.DPoPAuth(child, worker)
    r = requests.get(url, auth=auth, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["agent"] == "worker"
    # Each request gets a fresh proof: a second one is not a replay.
    assert requests.get(url, auth=auth, timeout=10).status_code == 200
    with httpx.Client(auth=auth, timeout=10) as c:
        assert c.get(url).status_code == 200
        assert c.get(url + "?q=1").status_code == 200

    async def run():
        async with httpx.AsyncClient(auth=auth, timeout=10) as c:
            return (await c.get(url)).status_code

    assert asyncio.run(run()) == 200
    # The chain alone, as a bearer token: refused.
    r = requests.get(url, headers={"Authorization": f"Bearer {child}"}, timeout=10)
    assert r.status_code == 401 and r.json()["error"] == "pop_required"
    # Another key's proof: refused.
    r = requests.get(url, auth=veto.DPoPAuth(child, veto.Key.generate()), timeout=10)
    assert r.status_code == 401 and r.json()["error"] == "pop_invalid"


def test_revocation_reaches_the_proxy_and_the_fleet(services, reg, chains):
    _, worker, root, child = chains
    url = services.proxy + "/orders/1"
    auth = veto.DPoPAuth(child, worker)
    assert requests.get(url, auth=auth, timeout=10).status_code == 200
    result = reg.revoke("warrant", root.jti, reason="key_compromise", wait=True, timeout=10)
    assert result["created"] is True
    assert [g["name"] for g in result["fleet"]] == ["gw-python"]
    r = requests.get(url, auth=auth, timeout=10)
    assert r.status_code == 403 and r.json()["error"] == "revoked"
    audit = list(reg.audit(id=root.jti))
    assert any(a["action"] == "revoke" and a["reason"] == "key_compromise" for a in audit)


def test_holder_revokes_what_it_delegated(services, reg, chains):
    planner, worker, _, child = chains
    out = reg.revoke_as_holder(child, link=1, key=planner, reason="privilege_withdrawn")
    assert out["id"] == child.jti
    r = eventually(
        "the child is revoked at the proxy",
        lambda: (lambda r: r if r.status_code == 403 else None)(
            requests.get(services.proxy + "/orders/2", auth=veto.DPoPAuth(child, worker), timeout=10)
        ),
    )
    assert r.json()["error"] == "revoked"
    # A key bound nowhere in the chain may not.
    with pytest.raises(errors.VetoError) as e:
        reg.revoke_as_holder(child, link=1, key=veto.Key.generate())
    assert e.value.code in {"pop_invalid", "not_your_link"}


def test_errors_are_typed_after_the_codes(services, reg):
    with pytest.raises(errors.UnknownKind) as e:
        reg.revoke("nonsense", "x")
    assert isinstance(e.value, veto.VetoError) and e.value.code == "unknown_kind" and e.value.status == 400
    with pytest.raises(errors.Unauthorized):
        veto.Registry(services.registry, token="wrong").fleet()
    assert issubclass(errors.Revoked, veto.Denied) and errors.Revoked.code == "revoked"
    assert issubclass(errors.PopRequired, veto.Denied)


def test_the_authorizer_in_process(services, reg, chains):
    planner, worker, root, child = chains
    with pytest.raises(ValueError, match="revocation source"):
        veto.Authorizer(authority_key=services.authority_key)
    with veto.Authorizer(registry=services.registry, authority_key=services.authority_key) as authz:
        assert authz.status()["fresh"]
        url = services.proxy + "/orders/7"
        proof = veto.dpop_proof(child, worker, "GET", url)
        d = authz.check(child, action="http:GET:/orders/7", dpop=proof, method="GET", url=url)
        assert d.allowed and not d.stale, d
        # The same proof again: a replay.
        d = authz.check(child, action="http:GET:/orders/7", dpop=proof, method="GET", url=url)
        assert not d.allowed and d.reason == "pop_invalid"
        # A proof without the request it came with cannot be checked.
        with pytest.raises(ValueError, match="method= and url="):
            authz.check(child, action="http:GET:/orders/7", dpop=proof)
        # No proof under the default policy.
        d = authz.check(child, action="http:GET:/orders/7")
        assert not d.allowed and d.reason == "pop_required"
        with pytest.raises(errors.PopRequired):
            d.raise_for_denial()
        # Not an action the leaf allows.
        proof = veto.dpop_proof(child, worker, "POST", url)
        d = authz.check(child, action="http:POST:/orders/7", dpop=proof, method="POST", url=url)
        assert d.reason == "action_denied"
        # Revoked: by push, within moments.
        reg.revoke("warrant", child.jti, reason="superseded")

        def denied():
            p = veto.dpop_proof(child, worker, "GET", url)
            d = authz.check(child, action="http:GET:/orders/7", dpop=p, method="GET", url=url)
            return d if d.reason == "revoked" else None

        eventually("the authorizer applies the revocation", denied)


def test_pop_off_for_chains_handed_over_in_process_and_the_tool_decorator(services, reg):
    holder = veto.Key.generate()
    chain = reg.mint(agent="mcp-agent", act=["mcp:tool:search"], ttl=600, holder=holder.public)
    authz = veto.Authorizer(registry=services.registry, authority_key=services.authority_key, pop="off")
    assert authz.check(chain, action="mcp:tool:search").allowed
    assert authz.check(chain, action="mcp:tool:delete").reason == "action_denied"

    @veto.require(authz, "mcp:tool:search")
    def search(query: str) -> str:
        return "results for " + query

    assert search(query="orders", veto_chain=chain) == "results for orders"
    with pytest.raises(errors.ActionDenied):
        veto.require(authz, "mcp:tool:delete")(lambda: "deleted")(veto_chain=chain)

    @veto.require(authz, lambda query: "mcp:tool:" + query)
    async def dynamic(query: str) -> str:
        return query

    assert asyncio.run(dynamic(query="search", veto_chain=chain)) == "search"
    reg.revoke("warrant", chain.jti)
    eventually("revoked in process", lambda: authz.check(chain, action="mcp:tool:search").reason == "revoked")
    with pytest.raises(errors.Revoked):
        search(query="x", veto_chain=chain)
    authz.close()


def test_asgi_middleware(services, reg):
    holder = veto.Key.generate()
    chain = reg.mint(agent="svc-client", act=["http:GET:/items/*"], ttl=600, holder=holder.public)
    authz = veto.Authorizer(registry=services.registry, authority_key=services.authority_key)
    seen = {}

    async def app(scope, receive, send):
        seen["decision"] = scope["state"]["veto"]
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"hello"})

    asgi = veto.VetoMiddleware(app, authz)

    async def run():
        transport = httpx.ASGITransport(app=asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc.test") as c:
            ok = await c.get("/items/3", auth=veto.DPoPAuth(chain, holder))
            bearer = await c.get("/items/3", headers={"Authorization": f"Bearer {chain}"})
            other = await c.get("/admin", auth=veto.DPoPAuth(chain, holder))
            none = await c.get("/items/3")
            return ok, bearer, other, none

    ok, bearer, other, none = asyncio.run(run())
    assert ok.status_code == 200 and ok.text == "hello" and seen["decision"].allowed
    assert bearer.status_code == 401 and bearer.json()["error"] == "pop_required"
    assert bearer.headers["www-authenticate"].startswith("DPoP ")
    assert other.status_code == 403 and other.json()["error"] == "action_denied"
    assert none.status_code == 401
    authz.close()


def test_canonical_htu_matches_the_proxy():
    assert veto.canonical_htu("HTTP://Example.COM:80/a/./b/../c?x=1#f") == "http://example.com/a/c"
    with pytest.raises(ValueError):
        veto.canonical_htu("ftp://example.com/")


def test_careless_inputs_are_refused_clearly(services, reg, tmp_path):
    k = veto.Key.generate()
    # A string is not a list of actions (its `*` would permit everything).
    with pytest.raises(TypeError, match="list of action patterns"):
        reg.mint(agent="a", act="http:GET:/orders/*", ttl=300, holder=k.public)
    root = reg.mint(agent="a", act=["http:GET:/orders/*"], ttl=300, holder=k.public)
    with pytest.raises(TypeError):
        root.delegate(k, agent="b", act="http:GET:/orders/1", ttl=60)
    with pytest.raises(ValueError, match="ttl"):
        root.delegate(k, agent="b", act=["http:GET:/orders/1"], ttl=-5)
    # The private authority key is never what a service pins.
    with pytest.raises(ValueError, match="private key"):
        veto.Authorizer(registry=services.registry, authority_key=services.data / "authority.jwk")
    # A token read with its newline works; a token that cannot be sent is
    # refused without repeating it.
    assert veto.Registry(services.registry, token=services.token + "\n").fleet()["gateways"]
    with pytest.raises(ValueError) as e:
        veto.Registry(services.registry, token="secret-token\x01")
    assert "secret-token" not in str(e.value)
    with pytest.raises(veto.RegistryUnreachable):
        veto.Registry("http://127.0.0.1:9", token="x").fleet()
    # "Bearer " names a bearer presentation, proof or not.
    authz = veto.Authorizer(registry=services.registry, authority_key=services.authority_key)
    url = services.proxy + "/orders/1"
    proof = veto.dpop_proof(root, k, "GET", url)
    d = authz.check(f"Bearer {root}", action="http:GET:/orders/1", dpop=proof, method="GET", url=url)
    assert d.reason == "pop_required"
    d = authz.check(f"dpop {root}", action="http:GET:/orders/1", dpop=proof, method="GET", url=url)
    assert d.allowed, d
    authz.close()


def test_asgi_paths_are_canonical(services, reg):
    holder = veto.Key.generate()
    chain = reg.mint(agent="svc", act=["http:GET:/items/*"], ttl=600, holder=holder.public)
    authz = veto.Authorizer(registry=services.registry, authority_key=services.authority_key)
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    asgi = veto.VetoMiddleware(app, authz)

    async def run(path, signed_for=None):
        # A hostile client signs the proof for where it means to land.
        proof = veto.dpop_proof(chain, holder, "GET", "http://svc.test" + (signed_for or path))
        headers = {"Authorization": f"DPoP {chain}", "DPoP": proof}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://svc.test") as c:
            return await c.get(path, headers=headers)

    for sneaky in ["/items/%2e%2e/admin", "/items/..%2fadmin", "/items/%2E%2E/admin", "/items/../admin"]:
        r = asyncio.run(run(sneaky, signed_for="/admin"))
        # Refused as not canonical, or (where the client already removed the
        # dot segments) denied for the path it really names: never served.
        assert r.json()["error"] in ("malformed", "action_denied"), (sneaky, r.text)
    assert asyncio.run(run("/items/a%20b")).status_code == 200
    assert asyncio.run(run("/items/caf%C3%A9")).status_code == 200
    assert all(not p.startswith("/admin") and ".." not in p for p in seen), seen
    authz.close()
