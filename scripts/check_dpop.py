#!/usr/bin/env python3
"""Independent check of veto's proof of possession (DPoP, RFC 9449).

With Python's `cryptography` and nothing of veto's code, against the real
`veto serve` and `veto proxy` binaries on loopback:

1. Makes an Ed25519 holder key, has the registry issue a warrant bound to
   it (`veto issue --holder-key`), and sends requests through `veto proxy`
   (default policy: `required`) with proofs made here, by this script:
   the proof is accepted; the same proof again (replay), a proof with a
   flipped signature bit, and one for another method are refused with 401.
2. Has veto make a proof (`veto dpop`) and verifies it here: header `typ`
   `dpop+jwt`, `alg` `EdDSA`, `jwk` = the holder's public key; the Ed25519
   signature; claims `htm`, `htu`, `iat` (now), `jti`, and `ath` =
   base64url(SHA-256(chain)).

Run from the repository root after `cargo build` (the binary is taken from
$VETO_BIN, else $CARGO_TARGET_DIR/{release,debug}/veto, else target/...):

    python3 scripts/check_dpop.py

The last line is `N passed, M failed`; the exit status is non-zero if any
check failed.
"""

import base64
import hashlib
import http.server
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

PASSED = 0
FAILED = 0


def check(what, ok, detail=""):
    global PASSED, FAILED
    if ok:
        PASSED += 1
        print(f"ok   {what}")
    else:
        FAILED += 1
        print(f"FAIL {what} {detail}")


def b64url(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def veto_bin():
    if os.environ.get("VETO_BIN"):
        return os.environ["VETO_BIN"]
    for base in [os.environ.get("CARGO_TARGET_DIR"), "target"]:
        for profile in ["release", "debug"]:
            if base and os.path.exists(os.path.join(base, profile, "veto")):
                return os.path.join(base, profile, "veto")
    sys.exit("no veto binary: run `cargo build` or set VETO_BIN")


def start(args, ready_prefix, env=None):
    """Starts a veto process; returns it and the line starting with ready_prefix."""
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    deadline = time.time() + 30
    lines = []
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.strip().startswith(ready_prefix):
            # Keep draining its output so it never blocks on a full pipe.
            threading.Thread(target=lambda: proc.stdout.read(), daemon=True).start()
            return proc, line.strip()
    proc.kill()
    sys.exit(f"`{' '.join(args[:2])}` did not start:\n{''.join(lines)}")


class Upstream(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"ok"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def public_jwk(public_key):
    raw = public_key.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}


def make_proof(private_key, method, url, chain, iat=None):
    """A DPoP proof made here, per RFC 9449 4.2, from nothing of veto's."""
    header = {"typ": "dpop+jwt", "alg": "EdDSA", "jwk": public_jwk(private_key.public_key())}
    claims = {
        "jti": secrets.token_urlsafe(16),
        "htm": method,
        "htu": url.split("?")[0].split("#")[0],
        "iat": int(time.time()) if iat is None else iat,
        "ath": b64url(hashlib.sha256(chain.encode("ascii")).digest()),
    }
    signing_input = (
        b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64url(json.dumps(claims, separators=(",", ":")).encode())
    )
    signature = private_key.sign(signing_input.encode("ascii"))
    return signing_input + "." + b64url(signature)


def request(url, chain, proof, method="GET"):
    req = urllib.request.Request(url, method=method)
    req.add_header("Authorization", f"DPoP {chain}")
    if proof is not None:
        req.add_header("DPoP", proof)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def main():
    veto = veto_bin()
    work = tempfile.mkdtemp(prefix="veto-dpop-check-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VETO_")}
    env["HOME"] = work
    env["XDG_CONFIG_HOME"] = work
    procs = []
    try:
        data = os.path.join(work, "data")
        reg, line = start(
            [veto, "serve", "--listen", "127.0.0.1:0", "--data-dir", data],
            "veto registry listening on",
            env,
        )
        procs.append(reg)
        registry = line.rsplit(" ", 1)[1]

        upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
        threading.Thread(target=upstream.serve_forever, daemon=True).start()
        upstream_url = f"http://127.0.0.1:{upstream.server_address[1]}"

        proxy, line = start(
            [
                veto, "proxy", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
                "--upstream", upstream_url, "--registry", registry,
                "--authority-key", os.path.join(data, "authority.pub.jwk"),
            ],
            "veto proxy listening on",
            env,
        )
        procs.append(proxy)
        proxy_url = line.rsplit(" ", 1)[1]

        # The holder key, made here; the registry binds its public half.
        holder = Ed25519PrivateKey.generate()
        pub_file = os.path.join(work, "holder.pub.jwk")
        with open(pub_file, "w") as f:
            json.dump(public_jwk(holder.public_key()), f)
        out = subprocess.run(
            [
                veto, "issue", "--agent", "python-agent", "--act", "http:GET:/*",
                "--ttl", "10m", "--holder-key", pub_file,
                "--registry", registry, "--token-file", os.path.join(data, "admin.token"),
            ],
            capture_output=True, text=True, env=env, check=False,
        )
        if out.returncode != 0:
            sys.exit(f"veto issue failed: {out.stderr}")
        chain = out.stdout.strip()

        # 1. Proofs made here, through the real proxy.
        url = f"{proxy_url}/orders/7?x=1"
        deadline = time.time() + 15
        while True:
            status, body = request(url, chain, make_proof(holder, "GET", url, chain))
            if status != 503 or time.time() > deadline:
                break
            time.sleep(0.1)  # the proxy has not synced yet
        check("an independent proof is accepted by veto proxy", status == 200, f"{status} {body}")
        proof = make_proof(holder, "GET", url, chain)
        first = request(url, chain, proof)[0]
        replay = request(url, chain, proof)
        check(
            "the same proof twice: the replay is refused",
            first == 200 and replay[0] == 401 and "pop_invalid" in replay[1],
            f"{first} {replay}",
        )
        head, claims, sig = make_proof(holder, "GET", url, chain).split(".")
        raw = bytearray(b64url_decode(sig))
        raw[0] ^= 1
        flipped = f"{head}.{claims}.{b64url(bytes(raw))}"
        got = request(url, chain, flipped)
        check("a proof with a flipped signature bit is refused", got[0] == 401, f"{got}")
        got = request(url, chain, make_proof(holder, "POST", url, chain))
        check("a proof for another method is refused", got[0] == 401, f"{got}")
        got = request(url, chain, None)
        check("no proof is refused (pop_required)", got[0] == 401 and "pop_required" in got[1], f"{got}")

        # 2. A proof made by veto, checked here.
        d = holder.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        key_file = os.path.join(work, "holder.jwk")
        with open(key_file, "w") as f:
            json.dump(dict(public_jwk(holder.public_key()), d=b64url(d)), f)
        os.chmod(key_file, 0o600)
        target = "https://api.example:8443/tools/search?q=1"
        out = subprocess.run(
            [veto, "dpop", "--chain", chain, "--holder-key", key_file, "-X", "POST", target],
            capture_output=True, text=True, env=env, check=False,
        )
        check("veto dpop makes a proof", out.returncode == 0, out.stderr)
        made = out.stdout.strip()
        if made.count(".") != 2:
            sys.exit(f"veto dpop printed no proof: {out.stdout!r} {out.stderr!r}")
        h, c, s = made.split(".")
        header = json.loads(b64url_decode(h))
        payload = json.loads(b64url_decode(c))
        check("its header: typ dpop+jwt, alg EdDSA", header.get("typ") == "dpop+jwt" and header.get("alg") == "EdDSA", header)
        jwk = header.get("jwk", {})
        check("its header jwk is the holder's public key, without `d`",
              jwk.get("x") == public_jwk(holder.public_key())["x"] and "d" not in jwk, jwk)
        try:
            Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"])).verify(
                b64url_decode(s), f"{h}.{c}".encode("ascii"))
            verified = True
        except (InvalidSignature, KeyError, ValueError):
            verified = False
        check("its Ed25519 signature verifies with cryptography", verified)
        check("htm and htu name the request (no query)",
              payload.get("htm") == "POST" and payload.get("htu") == "https://api.example:8443/tools/search", payload)
        check("iat is now", abs(payload.get("iat", 0) - time.time()) < 30, payload)
        check("jti is present", isinstance(payload.get("jti"), str) and len(payload["jti"]) >= 16, payload)
        check("ath is base64url(SHA-256(chain))",
              payload.get("ath") == b64url(hashlib.sha256(chain.encode("ascii")).digest()), payload)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)
    print(f"{PASSED} passed, {FAILED} failed")
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
