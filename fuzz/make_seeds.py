#!/usr/bin/env python3
"""Writes the small seed corpora in fuzz/seeds/<target>/ from the
conformance vectors in tests/vectors (run from anywhere; deterministic).

Crash reproductions found by fuzzing are kept next to the seeds as
`crash-<what>` files; this script leaves them alone.

Each seed starts with the target's mode byte where it has one (see the
comment at the top of each fuzz_targets/*.rs): 0x00 = a raw token, 0x01 = a
payload the target signs itself with its fixed key.
"""
import base64
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "vectors"
SEEDS = ROOT / "fuzz" / "seeds"


def vec(name):
    return json.loads((VECTORS / f"{name}.json").read_text())


def payload(jws):
    p = jws.split(".")[1]
    return base64.urlsafe_b64decode(p + "=" * (-len(p) % 4))


def b64d(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def objects(name, kind):
    v = vec(name)
    objs = v["setup"] + ([v["input"]] if v.get("input") else [])
    return [o["jws"] for o in objs if o["as"] == kind]


def main():
    # Overwrites only its own files: crash reproductions (`crash-*`) added
    # by hand stay.
    seeds = {}

    def add(target, name, data):
        seeds.setdefault(target, []).append((name, data))

    # Signed published objects: as tokens (mode 0) and as payloads (mode 1).
    for target, cases in {
        "delta": ["apply-delta-next", "apply-delta-wrong-prev", "apply-delta-gap"],
        "checkpoint": ["apply-checkpoint-refresh", "apply-checkpoint-gap"],
        "snapshot": ["apply-snapshot-advance", "apply-snapshot-rollback"],
    }.items():
        for case in cases:
            jws = objects(case, target)[-1]
            add(target, f"{case}.token", b"\x00" + jws.encode())
            if target == "snapshot":
                # The vectors hold the text container (JWS `~` base64url
                # tables): seed the binary one too, and the payload to sign
                # followed by `\n` and the table bytes.
                head, tables = jws.split("~")
                add(target, f"{case}.binary", b"\x00" + head.encode() + b"\n" + b64d(tables))
                add(target, f"{case}.payload", b"\x01" + payload(head) + b"\n" + b64d(tables))
            else:
                add(target, f"{case}.payload", b"\x01" + payload(jws))

    # JWS: one of each typ, and a payload to sign.
    for case, kind in [
        ("apply-delta-next", "delta"),
        ("apply-checkpoint-refresh", "checkpoint"),
        ("apply-snapshot-advance", "snapshot"),
    ]:
        # A snapshot's container: its JWS alone.
        add("jws", f"{case}.token", b"\x00" + objects(case, kind)[-1].split("~")[0].encode())
    chain = vec("allow-chain-depth-3")["token"]
    add("jws", "warrant-root.token", b"\x00" + chain.split("~")[0].encode())
    add("jws", "payload", b"\x01" + payload(chain.split("~")[0]))

    # Chains: valid, revoked, invalid; as tokens, and as a root payload the
    # target signs followed by the original children.
    for case in [
        "allow-chain-depth-3",
        "allow-plain-jwt-root",
        "deny-revoked-agent-cutoff",
        "deny-chain-invalid-widened-act",
    ]:
        token = vec(case)["token"]
        add("chain", f"{case}.token", b"\x00" + token.encode())
        links = token.split("~")
        tail = ("~" + "~".join(links[1:])).encode() if len(links) > 1 else b""
        add("chain", f"{case}.signed-root", b"\x01" + payload(links[0]) + tail)

    # SSE: what the registry sends, and edge cases of line endings.
    delta = objects("apply-delta-next", "delta")[-1]
    cp = objects("apply-checkpoint-refresh", "checkpoint")[-1]
    # byte 0: limit selector (3 = 1 MiB); byte 1: split count; 2 bytes each.
    add("sse", "registry", b"\x03\x02\x05\x00\x40\x00"
        + f"event: delta\nid: 2\ndata: {delta}\n\nevent: checkpoint\ndata: {cp}\n\n".encode())
    add("sse", "crlf", b"\x02\x01\x0e\x00: hi\r\nevent: delta\r\nid: 7\r\ndata: a\r\ndata: b\r\n\r\ndata\r\r\n")
    add("sse", "small-limit", b"\x00\x01\x03\x00data: 0123456789abcdef\n\n")

    # Admin bodies.
    add("admin_json", "revoke", json.dumps({"entries": [
        {"kind": "warrant", "id": "w1", "reason": "key_compromise", "note": "n"},
        {"kind": "agent", "id": "bob", "before": 1800000000, "expires_at": 1900000000},
        {"kind": "key", "id": "kid"}], "actor": "ops"}).encode())
    add("admin_json", "revoke-bad", b'{"entries":[{"kind":"agent","id":"a"}]}')
    issuer = vec("allow-chain-depth-3")["issuer_jwk"]
    add("admin_json", "mint", json.dumps({"agent": "alice", "act": ["http:GET:/*"], "ttl": 3600,
                                          "holder_key": issuer}).encode())

    # JWKs: public (vectors), private (RFC 8037 A.1), odd shapes.
    add("jwk", "public", json.dumps(issuer).encode())
    add("jwk", "rfc8037-private", b'{"kty":"OKP","crv":"Ed25519","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}')
    add("jwk", "x25519", b'{"kty":"OKP","crv":"X25519","x":"hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo"}')

    for target, items in seeds.items():
        d = SEEDS / target
        d.mkdir(parents=True, exist_ok=True)
        for name, data in items:
            (d / name).write_bytes(data)
    print(sum(len(v) for v in seeds.values()), "seeds in", len(seeds), "targets")


if __name__ == "__main__":
    main()
