#!/usr/bin/env python3
"""veto from Python, end to end on loopback: a registry and a gateway (the
`veto` binary: `cargo build --release` first, or set VETO_BIN), an upstream
service, an agent that mints and delegates, signs requests with DPoP, is
revoked, and a Python service that enforces the same revocation
in-process.

    python3 -m pip install ./python && python3 python/examples/quickstart.py
"""

import http.server
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

import veto

ROOT = Path(__file__).resolve().parents[2]


def veto_bin() -> str:
    if os.environ.get("VETO_BIN"):
        return os.environ["VETO_BIN"]
    bases = [os.environ.get("CARGO_TARGET_DIR"), str(ROOT / "target")]
    found = [Path(b) / p / "veto" for b in bases if b for p in ("release", "debug") if (Path(b) / p / "veto").exists()]
    if not found:
        sys.exit("no veto binary: run `cargo build --release` in the repository, or set VETO_BIN")
    return str(max(found, key=lambda p: p.stat().st_mtime))


def start(args, ready):
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.strip().startswith(ready.strip()):
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, lines
    sys.exit("".join(lines))


class Orders(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"order {self.path.rsplit('/', 1)[-1]} for {self.headers.get('Veto-Agent')}\n".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    tmp = Path(tempfile.mkdtemp(prefix="veto-quickstart-"))
    data = tmp / "data"
    registry, lines = start([veto_bin(), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data)], "veto registry listening on")
    url = next(l for l in lines if l.startswith("veto registry listening on")).split()[-1]
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Orders)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    gateway, lines = start([veto_bin(), "proxy", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
                            "--upstream", f"http://127.0.0.1:{upstream.server_address[1]}", "--registry", url,
                            "--authority-key", str(data / "authority.pub.jwk"), "--name", "gw-quickstart",
                            "--fleet-token-file", str(data / "fleet.token"), "--cache-dir", str(tmp / "gw")],
                           "  admin (metrics, health):")
    gw = next(l for l in lines if l.startswith("veto proxy listening on")).split()[-1]
    try:
        token = (data / "admin.token").read_text().strip()
        reg = veto.Registry(url, token=token)
        planner, worker = veto.Key.generate(), veto.Key.generate()
        root = reg.mint(agent="planner", act=["http:*:/orders/*"], ttl=3600, holder=planner.public)
        child = root.delegate(planner, agent="worker", act=["http:GET:/orders/*"], ttl=600, to=worker.public)
        print("chain:", repr(child))

        r = requests.get(gw + "/orders/7", auth=veto.DPoPAuth(child, worker))
        print("worker, signed request   ->", r.status_code, r.text.strip())
        r = requests.get(gw + "/orders/7", headers={"Authorization": f"Bearer {child}"})
        print("stolen chain, no proof   ->", r.status_code, r.json()["error"])

        authz = veto.Authorizer(registry=url, authority_key=data / "authority.pub.jwk")
        proof = veto.dpop_proof(child, worker, "GET", gw + "/orders/7")
        print("in-process check         ->", authz.check(child, action="http:GET:/orders/7", dpop=proof, method="GET", url=gw + "/orders/7"))

        started = time.monotonic()
        out = reg.revoke("warrant", root.jti, reason="key_compromise", wait=True)
        print(f"revoked in version {out['version']}, in force at {[g['name'] for g in out['fleet']]} "
              f"after {(time.monotonic() - started) * 1000:.0f} ms")
        r = requests.get(gw + "/orders/7", auth=veto.DPoPAuth(child, worker))
        print("worker, after revocation ->", r.status_code, r.json()["error"])
        time.sleep(0.2)
        proof = veto.dpop_proof(child, worker, "GET", gw + "/orders/7")
        print("in-process check         ->", authz.check(child, action="http:GET:/orders/7", dpop=proof, method="GET", url=gw + "/orders/7"))
        authz.close()
    finally:
        for p in (gateway, registry):
            p.terminate()
            p.wait(10)
        upstream.shutdown()


if __name__ == "__main__":
    main()
