#!/usr/bin/env python3
"""Independent check of veto's signed objects, with Python's `cryptography`.

Loads every conformance vector in tests/vectors/*.json and, for every JWS in
its `signatures` table:

- parses the compact form strictly (three unpadded base64url parts);
- checks the protected header: `alg` is `EdDSA`, `typ` is the one listed,
  `kid` is present;
- when the vector says the object is validly signed: verifies the Ed25519
  signature over the ASCII bytes `header.payload` with the key from the
  signer's JWK `x`, and checks that `kid` is the RFC 7638 thumbprint of that
  key (SHA-256 over {"crv":"Ed25519","kty":"OKP","x":"..."}, base64url);
- when it says the object is tampered or forged: checks that it does NOT
  verify with the key its `kid` names.

For every `apply` vector whose input is an issuer key set
(`veto-issuers+jwt`), it also replays the case on its own: verifies each set
(`typ`, the pinned authority key, `iss`, `iat` within the clock-skew
allowance), applies the DESIGN 3.5 rule (higher `ver` replaces; the same
`ver` with the same keys is ignored, with other keys an equivocation; a
lower `ver` a rollback), and compares the outcome and the keys applied
afterwards with what the vector expects.

For every snapshot object (`"as": "snapshot"`, the text container: the
compact JWS, `~`, base64url of the table bytes), it also checks the format
on its own: the JWS verifies with the pinned authority key as
`veto-srl+jwt`; its payload is exactly `{iss, ver, head, iat, exp, digest,
tables: {sha256, warrants, agents, keys}}` with `digest` `sha256-96`; the
table bytes are exactly `12 * warrants + 20 * agents + 12 * keys` long,
hash to `tables.sha256`, and each list is strictly ascending by digest.
The same bytes as the binary container (JWS, `\n`, table bytes) must split
back to the same JWS and tables; a flipped table byte, a missing record
and a bare JWS must be refused.

It shares no code with veto. Run from the repository root:

    python3 scripts/check_jose.py

The last line is `N passed, M failed`; the exit status is non-zero if any
check failed.
"""

import base64
import binascii
import glob
import hashlib
import json
import os
import re
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

B64URL = re.compile(r"^[A-Za-z0-9_-]*$")


def b64url_decode(text):
    """Strict unpadded base64url: alphabet only, canonical encoding."""
    if not B64URL.match(text) or len(text) % 4 == 1:
        raise ValueError(f"not unpadded base64url: {text[:40]!r}")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64url_encode(raw) != text:
        raise ValueError(f"non-canonical base64url: {text[:40]!r}")
    return raw


def b64url_encode(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def thumbprint(x):
    """RFC 7638 thumbprint of an Ed25519 JWK with public member `x`."""
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"), sort_keys=True)
    return b64url_encode(hashlib.sha256(canonical.encode("ascii")).digest())


def public_key(jwk):
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise ValueError(f"not an Ed25519 JWK: {jwk}")
    x = b64url_decode(jwk["x"])
    if len(x) != 32:
        raise ValueError("`x` is not 32 bytes")
    if "kid" in jwk and jwk["kid"] != thumbprint(jwk["x"]):
        raise ValueError(f"JWK kid {jwk['kid']} is not its thumbprint {thumbprint(jwk['x'])}")
    return Ed25519PublicKey.from_public_bytes(x)


def verifies(key, jws):
    """Whether `jws` verifies as EdDSA with `key`; the header must say EdDSA."""
    parts = jws.split(".")
    if len(parts) != 3:
        raise ValueError("not three dot-separated parts")
    h, p, s = parts
    header = json.loads(b64url_decode(h))
    if header.get("alg") != "EdDSA":
        return False
    b64url_decode(p)
    sig = b64url_decode(s)
    if len(sig) != 64:
        return False
    try:
        key.verify(sig, f"{h}.{p}".encode("ascii"))
        return True
    except InvalidSignature:
        return False


class Tally:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, ok, what):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            print(f"FAIL {what}")


def check_signature(tally, where, entry, keys):
    jws, signer, valid = entry["jws"], entry["signer"], entry["valid"]
    what = f"{where}: {signer} {'valid' if valid else 'tampered/forged'} {entry['typ'] or 'JWT'}"
    try:
        h, p, s = jws.split(".")
        header = json.loads(b64url_decode(h))
        jwk = keys[signer]
        key = public_key(jwk)
        problems = []
        if header.get("alg") != "EdDSA":
            problems.append(f"alg is {header.get('alg')!r}")
        if header.get("typ", "") != entry["typ"]:
            problems.append(f"typ is {header.get('typ')!r}, listed {entry['typ']!r}")
        if header.get("kid") != thumbprint(jwk["x"]):
            problems.append("kid is not the RFC 7638 thumbprint of the signer's key")
        ok = verifies(key, jws)
        if valid and not ok:
            problems.append("signature does not verify")
        if not valid and ok:
            problems.append("a tampered or forged object verifies")
        tally.check(not problems, f"{what}: {'; '.join(problems)}")
    except Exception as e:  # a malformed vector is a failure, not a crash
        tally.check(False, f"{what}: {type(e).__name__}: {e}")


ISSUERS_TYP = "veto-issuers+jwt"


def verify_issuers(vector, jws):
    """Verifies an issuer key set as an authorizer would; returns (error, payload)."""
    h, p, _ = jws.split(".")
    header = json.loads(b64url_decode(h))
    if header.get("typ") != ISSUERS_TYP:
        return "wrong_typ", None
    authority = vector["authority_jwk"]
    if header.get("kid") != thumbprint(authority["x"]):
        return "unknown_key", None
    if not verifies(public_key(authority), jws):
        return "bad_signature", None
    payload = json.loads(b64url_decode(p))
    if payload.get("iss") != vector["iss"]:
        return "wrong_issuer", None
    if payload["iat"] > vector["now"] + vector["config"]["skew"]:
        return "from_future", None
    return None, payload


def apply_issuers(vector, applied, jws):
    """One set applied to `applied` ((ver, sorted x values) or None): (expect, applied)."""
    error, payload = verify_issuers(vector, jws)
    if error:
        return {"apply": "rejected", "stage": "verify", "error": error}, applied
    ver, xs = payload["ver"], sorted(k["x"] for k in payload["keys"])
    if applied is not None and ver < applied[0]:
        return {"apply": "rejected", "stage": "apply", "error": "rollback"}, applied
    if applied is not None and ver == applied[0]:
        if xs == applied[1]:
            return {"apply": "ignored"}, applied
        return {"apply": "rejected", "stage": "apply", "error": "equivocation"}, applied
    return {"apply": "advanced", "from": applied[0] if applied else 0, "to": ver}, (ver, xs)


def check_issuer_set_case(tally, name, vector, keys):
    """Replays an issuer key set `apply` case independently."""
    try:
        applied = None
        for i, o in enumerate(vector["setup"]):
            got, applied = apply_issuers(vector, applied, o["jws"])
            tally.check(got["apply"] == "advanced", f"{name}: setup set {i} applies: {got}")
        got, applied = apply_issuers(vector, applied, vector["input"]["jws"])
        tally.check(got == vector["expect"], f"{name}: outcome {got}, vector says {vector['expect']}")
        by_x = {jwk["x"]: n for n, jwk in keys.items()}
        want = vector["expect_issuers"]
        have = {"ver": applied[0], "keys": sorted(by_x[x] for x in applied[1])} if applied else None
        tally.check(have == want, f"{name}: issuer key set after {have}, vector says {want}")
    except Exception as e:  # a malformed vector is a failure, not a crash
        tally.check(False, f"{name}: issuer key set replay: {type(e).__name__}: {e}")


SNAPSHOT_TYP = "veto-srl+jwt"
SNAPSHOT_CLAIMS = {"iss", "ver", "head", "iat", "exp", "digest", "tables"}
TABLES_CLAIMS = {"sha256", "warrants", "agents", "keys"}


def snapshot_problems(authority, container):
    """What is wrong with a snapshot container (bytes, either form): [] when it is valid."""
    cut = [i for i in (container.find(b"\n"), container.find(b"~")) if i >= 0]
    if not cut:
        return ["no separator after the JWS"]
    at = min(cut)
    jws, sep, rest = container[:at].decode("ascii"), container[at:at + 1], container[at + 1:]
    try:
        tables = rest if sep == b"\n" else b64url_decode(rest.decode("ascii"))
    except (ValueError, UnicodeDecodeError) as e:
        return [f"tables are not base64url: {e}"]
    parts = jws.split(".")
    if len(parts) != 3:
        return ["not a compact JWS"]
    header = json.loads(b64url_decode(parts[0]))
    problems = []
    if header.get("alg") != "EdDSA" or header.get("typ") != SNAPSHOT_TYP:
        problems.append(f"header {header}")
    if not verifies(public_key(authority), jws):
        return problems + ["signature does not verify with the authority key"]
    payload = json.loads(b64url_decode(parts[1]))
    if set(payload) != SNAPSHOT_CLAIMS or set(payload["tables"]) != TABLES_CLAIMS:
        return problems + [f"claims {sorted(payload)}"]
    if payload["digest"] != "sha256-96":
        problems.append(f"digest {payload['digest']!r}")
    t = payload["tables"]
    w, a, k = t["warrants"], t["agents"], t["keys"]
    if len(tables) != 12 * w + 20 * a + 12 * k:
        return problems + [f"tables are {len(tables)} bytes, counts make {12 * w + 20 * a + 12 * k}"]
    if not re.fullmatch(r"[0-9a-f]{64}", t["sha256"]) or hashlib.sha256(tables).hexdigest() != t["sha256"]:
        return problems + ["tables do not hash to tables.sha256"]
    lists = {
        "warrants": [tables[i:i + 12] for i in range(0, 12 * w, 12)],
        "agents": [tables[12 * w + i:12 * w + i + 12] for i in range(0, 20 * a, 20)],
        "keys": [tables[12 * w + 20 * a + i:12 * w + 20 * a + i + 12] for i in range(0, 12 * k, 12)],
    }
    for name, digests in lists.items():
        if any(x >= y for x, y in zip(digests, digests[1:])):
            problems.append(f"{name} not strictly ascending")
    return problems


def check_snapshot_case(tally, name, vector):
    """Checks every snapshot object of a vector independently, and hostile siblings of it."""
    authority = vector["authority_jwk"]
    objs = vector["setup"] + ([vector["input"]] if vector.get("input") else [])
    count = 0
    for i, o in enumerate(o for o in objs if o["as"] == "snapshot"):
        count += 1
        what = f"{name}: snapshot {i}"
        try:
            text = o["jws"].encode("ascii")
            problems = snapshot_problems(authority, text)
            tally.check(not problems, f"{what} (text): {'; '.join(problems)}")
            jws, tables_b64 = o["jws"].split("~")
            tables = b64url_decode(tables_b64)
            binary = jws.encode("ascii") + b"\n" + tables
            problems = snapshot_problems(authority, binary)
            tally.check(not problems, f"{what} (binary): {'; '.join(problems)}")
            if tables:
                flipped = binary[:-1] + bytes([binary[-1] ^ 1])
                tally.check(snapshot_problems(authority, flipped), f"{what}: a flipped table byte is refused")
                tally.check(snapshot_problems(authority, binary[:-12]), f"{what}: a missing record is refused")
            tally.check(snapshot_problems(authority, jws.encode("ascii")), f"{what}: a bare JWS is refused")
        except Exception as e:  # a malformed vector is a failure, not a crash
            tally.check(False, f"{what}: {type(e).__name__}: {e}")
    return count


def self_test(tally):
    # RFC 8037 appendix A: the thumbprint, and a signature over "Example of Ed25519 signing".
    x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    tally.check(thumbprint(x) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k", "RFC 8037 A.3 thumbprint")
    jws = (
        "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc."
        "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
    )
    key = public_key({"kty": "OKP", "crv": "Ed25519", "x": x})
    tally.check(verifies(key, jws), "RFC 8037 A.4 signature verifies")
    tampered = jws.replace("RXhhbXBsZSBvZiBF", "RXhhbXBsZSBvZiBG")
    tally.check(not verifies(key, tampered), "RFC 8037 A.4 tampered signature does not verify")


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = sorted(glob.glob(os.path.join(root, "tests", "vectors", "*.json")))
    tally = Tally()
    self_test(tally)
    tally.check(len(files) > 0, "tests/vectors/*.json exists")
    valid = invalid = replayed = snapshots = 0
    for path in files:
        name = os.path.basename(path)
        try:
            with open(path, encoding="utf-8") as f:
                vector = json.load(f)
            keys = dict(vector.get("other_jwks", {}))
            keys["issuer"] = vector["issuer_jwk"]
            keys["authority"] = vector["authority_jwk"]
            signatures = vector["signatures"]
        except Exception as e:
            tally.check(False, f"{name}: cannot read: {type(e).__name__}: {e}")
            continue
        tally.check(len(signatures) > 0, f"{name}: has signatures")
        for i, entry in enumerate(signatures):
            check_signature(tally, f"{name}[{i}]", entry, keys)
            valid += entry["valid"] is True
            invalid += entry["valid"] is False
        snapshots += check_snapshot_case(tally, name, vector)
        if vector.get("input", {}).get("as") == "issuers":
            check_issuer_set_case(tally, name, vector, keys)
            replayed += 1
    print(f"{len(files)} vector files, {valid} validly signed objects, {invalid} tampered or forged, "
          f"{replayed} issuer key set cases replayed, {snapshots} snapshots checked")
    tally.check(replayed > 0, "issuer key set cases exist")
    tally.check(snapshots > 0, "snapshots exist")
    print(f"{tally.passed} passed, {tally.failed} failed")
    return 1 if tally.failed else 0


if __name__ == "__main__":
    sys.exit(main())
