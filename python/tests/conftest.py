"""Fixtures: a real `veto serve` and a real `veto proxy` on loopback, in
front of a small upstream in this process. The `veto` binary is
VETO_BIN, or the newest build under CARGO_TARGET_DIR or ../target."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[2]


def veto_bin() -> str:
    if os.environ.get("VETO_BIN"):
        return os.environ["VETO_BIN"]
    bases = [os.environ.get("CARGO_TARGET_DIR"), str(ROOT / "target")]
    found = [
        Path(b) / p / "veto" for b in bases if b for p in ("release", "debug") if (Path(b) / p / "veto").exists()
    ]
    if not found:
        pytest.exit("no veto binary: run `cargo build --release -p veto` or set VETO_BIN", returncode=2)
    return str(max(found, key=lambda p: p.stat().st_mtime))


def start(args: List[str], ready: str) -> Tuple[subprocess.Popen, List[str]]:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: List[str] = []
    deadline = time.time() + 30
    assert proc.stdout is not None
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.strip().startswith(ready.strip()):
            rest = proc.stdout
            threading.Thread(target=lambda: [None for _ in rest], daemon=True).start()
            return proc, lines
    proc.kill()
    raise RuntimeError(f"{args[1]} did not start:\n{''.join(lines)}")


def url_in(line: str) -> str:
    return next(w for w in line.split() if w.startswith("http"))


class Upstream(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = json.dumps({"path": self.path, "agent": self.headers.get("Veto-Agent")}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


class Services:
    def __init__(self, registry: str, data: Path, proxy: str) -> None:
        self.registry = registry
        self.data = data
        self.proxy = proxy
        self.token = (data / "admin.token").read_text().strip()
        self.authority_key = data / "authority.pub.jwk"


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    tmp = tmp_path_factory.mktemp("veto")
    data = tmp / "data"
    bin_ = veto_bin()
    reg, lines = start([bin_, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data)], "veto registry listening on")
    registry = url_in(next(l for l in lines if l.startswith("veto registry listening on")))
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    prx, lines = start(
        [
            bin_, "proxy", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
            "--upstream", f"http://127.0.0.1:{upstream.server_address[1]}",
            "--registry", registry, "--authority-key", str(data / "authority.pub.jwk"),
            "--name", "gw-python", "--fleet-token-file", str(data / "fleet.token"),
            "--report-interval", "1s", "--cache-dir", str(tmp / "gw-cache"),
        ],
        "  admin (metrics, health):",
    )
    proxy = url_in(next(l for l in lines if l.startswith("veto proxy listening on")))
    try:
        yield Services(registry, data, proxy)
    finally:
        for p in (prx, reg):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        upstream.shutdown()
