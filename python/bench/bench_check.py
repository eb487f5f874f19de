#!/usr/bin/env python3
"""`veto.Authorizer.check` from Python, warm, beside Tenuo's
`SignedRevocationList.is_revoked` from Python, in one run.

    python3 -m pip install ./python tenuo==0.3.3
    python3 python/bench/bench_check.py [--entries 100000] [--calls 200000]

veto: a real `veto serve` (VETO_BIN, or the newest build under
CARGO_TARGET_DIR or ./target) holding `--entries` revoked warrant ids; an
in-process `veto.Authorizer` (pop="off": the chain handed over in-process)
synced to it; a depth-2 chain (root minted by the registry, one
delegation). Measured: ns per `check(chain, action)` call, mean over
`--calls` calls after a warm-up, allowed (unrevoked chain) and denied
(a revoked chain). Each check is the whole decision: the cached verified
chain, the revocation probes of every link, time, action, freshness.

Tenuo 0.3.3: an SRL of the same number of UUID ids, verified and loaded;
ns per `is_revoked(id)` call (one id: one probe), unrevoked and revoked.

Both include the Python -> native call; `len()` on a string is printed
as the floor of a Python call.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import veto

ROOT = Path(__file__).resolve().parents[2]


def veto_bin():
    if os.environ.get("VETO_BIN"):
        return os.environ["VETO_BIN"]
    bases = [os.environ.get("CARGO_TARGET_DIR"), str(ROOT / "target")]
    found = [Path(b) / p / "veto" for b in bases if b for p in ("release", "debug") if (Path(b) / p / "veto").exists()]
    if not found:
        sys.exit("no veto binary: cargo build --release -p veto, or set VETO_BIN")
    return str(max(found, key=lambda p: p.stat().st_mtime))


def per_call_ns(fn, args, calls):
    n = len(args)
    t0 = time.perf_counter_ns()
    for i in range(calls):
        fn(*args[i % n])
    return (time.perf_counter_ns() - t0) / calls


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--calls", type=int, default=200_000)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="veto-pybench-"))
    proc = subprocess.Popen([veto_bin(), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp / "data")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    url = next(w for w in line.split() if w.startswith("http"))
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    try:
        token = (tmp / "data" / "admin.token").read_text().strip()
        reg = veto.Registry(url, token=token)
        # Revoked ids, 1,000 per request.
        for i in range(0, a.entries, 1000):
            body = {"entries": [{"kind": "warrant", "id": f"bench-{j}", "reason": "superseded"} for j in range(i, min(i + 1000, a.entries))]}
            req = urllib.request.Request(url + "/v1/revocations", data=json.dumps(body).encode(), method="POST",
                                         headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
            urllib.request.urlopen(req).read()
        planner, worker = veto.Key.generate(), veto.Key.generate()
        root = reg.mint(agent="planner", act=["http:*:/orders/*"], ttl=3600, holder=planner.public)
        child = root.delegate(planner, agent="worker", act=["http:GET:/orders/*"], ttl=600, to=worker.public)
        gone = reg.mint(agent="gone", act=["http:GET:/orders/*"], ttl=3600, holder=worker.public)
        reg.revoke("warrant", gone.jti)
        authz = veto.Authorizer(registry=url, authority_key=tmp / "data" / "authority.pub.jwk", pop="off")
        while authz.status()["entries"] < a.entries + 1:
            time.sleep(0.05)
        chain, revoked, action = str(child), str(gone), "http:GET:/orders/7"
        assert authz.check(chain, action).allowed and authz.check(revoked, action).reason == "revoked"
        check = authz.check
        per_call_ns(check, [(chain, action)], 10_000)
        allowed = per_call_ns(check, [(chain, action)], a.calls)
        denied = per_call_ns(check, [(revoked, action)], a.calls)
        floor = per_call_ns(len, [(chain,)], a.calls)
        print("== veto.Authorizer.check from Python (warm, pop off, depth 2) ==")
        print(f"entries in the state : {authz.status()['entries']}")
        print(f"allowed              : {allowed:.0f} ns per call")
        print(f"denied (revoked)     : {denied:.0f} ns per call")
        print(f"len() floor          : {floor:.0f} ns per call")
        authz.close()
    finally:
        proc.terminate()
        proc.wait(10)
    try:
        from tenuo import SignedRevocationList, SigningKey, SrlBuilder
    except ImportError:
        print("tenuo: not installed (pip install tenuo==0.3.3) -- no peer figures")
        return
    ids = [str(uuid.UUID(int=i, version=4)) for i in range(a.entries)]
    key = SigningKey.generate()
    srl = SignedRevocationList.from_bytes(SrlBuilder().revoke_all(ids).version(1).build(key).to_bytes())
    srl.verify(key.public_key)
    miss = [(str(uuid.UUID(int=a.entries + i, version=4)),) for i in range(1000)]
    hit = [(ids[i],) for i in range(1000)]
    is_revoked = srl.is_revoked
    assert not is_revoked(miss[0][0]) and is_revoked(hit[0][0])
    per_call_ns(is_revoked, miss, 10_000)
    print("== Tenuo 0.3.3 SignedRevocationList.is_revoked from Python (one id) ==")
    print(f"unrevoked            : {per_call_ns(is_revoked, miss, a.calls):.0f} ns per call")
    print(f"revoked              : {per_call_ns(is_revoked, hit, a.calls):.0f} ns per call")


if __name__ == "__main__":
    main()
