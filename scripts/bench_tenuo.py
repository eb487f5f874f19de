#!/usr/bin/env python3
"""Peer benchmark: Tenuo signed revocation list (SRL), via the `tenuo` PyPI package.

How to run (from the repository root):

    python3 -m venv /tmp/tenuo-venv && /tmp/tenuo-venv/bin/pip install tenuo==0.3.3 \
        && /tmp/tenuo-venv/bin/python scripts/bench_tenuo.py

    /tmp/tenuo-venv/bin/python scripts/bench_tenuo.py --entries 10000

Pinned version: tenuo==0.3.3 (native extension `tenuo_core`, Ed25519 signatures,
CBOR serialization).

Revoked ids: N UUID4 strings in canonical 36-character form
(e.g. "f2daebc6-f574-4e6c-8460-5eb89f2409b1"), generated deterministically from a
seeded PRNG (`--seed`, default 1) via uuid.UUID(int=..., version=4). Lookup
probes for "unrevoked" ids are further UUID4s from the same PRNG, not in the list.

API calls measured (all from `tenuo`):

    key   = SigningKey.generate()                               # SRL issuer (Ed25519)
    srl   = SrlBuilder().revoke_all(ids).version(1).build(key)  # build + sign
    data  = srl.to_bytes()                                      # CBOR bytes
    srl2  = SignedRevocationList.from_bytes(data)               # deserialize
    srl2.verify(key.public_key)                                 # check issuer + signature
    srl2.is_revoked(warrant_id)                                 # lookup -> bool

Reported figures:
  * build_ms       : SrlBuilder().revoke_all(ids).version(1).build(key) (single run;
                     id generation is excluded)
  * to_bytes_ms    : srl.to_bytes() (single run)
  * bytes / MB     : len(to_bytes()); MB = 10^6 bytes (MiB also shown)
  * gzip_bytes     : len(gzip.compress(data, compresslevel=6)) -- the "on the wire" size
  * verify_load_ms : from_bytes(data) + verify(pubkey), median of 3 runs
                     (from_bytes and verify medians are printed separately too)
  * lookup_ns      : mean wall time per srl.is_revoked(id) call measured from Python,
                     over --lookups unrevoked ids and --lookups revoked ids (default
                     100000 each). It INCLUDES the Python->native call overhead;
                     `py_call_baseline_ns` (a loop calling the builtin len() on the
                     same ids) is printed so that overhead can be judged.
"""

import argparse
import gc
import gzip
import random
import resource
import statistics
import sys
import time
import uuid

try:
    import tenuo
    from tenuo import SignedRevocationList, SigningKey, SrlBuilder
except ImportError as exc:  # pragma: no cover
    sys.exit(f"cannot import tenuo ({exc}); see the docstring for how to install it")


def uuid4_strings(rng, n):
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]


def per_call_ns(fn, items):
    t0 = time.perf_counter_ns()
    for x in items:
        fn(x)
    return (time.perf_counter_ns() - t0) / len(items)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=1_000_000, help="revoked ids (default 1000000)")
    ap.add_argument("--lookups", type=int, default=100_000, help="lookups per kind (default 100000)")
    ap.add_argument("--runs", type=int, default=3, help="verify+load runs, median taken (default 3)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    n = args.entries

    rng = random.Random(args.seed)
    ids = uuid4_strings(rng, n)
    revoked_set = set(ids)
    unrevoked = [u for u in uuid4_strings(rng, args.lookups) if u not in revoked_set]
    revoked_probe = [ids[rng.randrange(n)] for _ in range(args.lookups)] if n else []
    del revoked_set

    key = SigningKey.generate()
    pub = key.public_key

    gc.collect()
    t0 = time.perf_counter()
    srl = SrlBuilder().revoke_all(ids).version(1).build(key)
    build_ms = (time.perf_counter() - t0) * 1e3

    t0 = time.perf_counter()
    data = srl.to_bytes()
    to_bytes_ms = (time.perf_counter() - t0) * 1e3
    del srl
    gc.collect()

    size = len(data)
    t0 = time.perf_counter()
    gz = gzip.compress(data, compresslevel=6)
    gzip_ms = (time.perf_counter() - t0) * 1e3

    from_ms, verify_ms, total_ms = [], [], []
    loaded = None
    for _ in range(args.runs):
        loaded = None
        gc.collect()
        t0 = time.perf_counter()
        s = SignedRevocationList.from_bytes(data)
        t1 = time.perf_counter()
        s.verify(pub)  # raises tenuo.exceptions.SignatureInvalid on failure
        t2 = time.perf_counter()
        from_ms.append((t1 - t0) * 1e3)
        verify_ms.append((t2 - t1) * 1e3)
        total_ms.append((t2 - t0) * 1e3)
        loaded = s

    is_revoked = loaded.is_revoked
    # correctness checks (outside timing)
    assert not any(is_revoked(u) for u in unrevoked[:1000]), "unrevoked id reported revoked"
    assert all(is_revoked(u) for u in revoked_probe[:1000]), "revoked id not found"
    assert loaded.version == 1

    per_call_ns(is_revoked, unrevoked[:1000])  # warm-up
    miss_ns = per_call_ns(is_revoked, unrevoked)
    hit_ns = per_call_ns(is_revoked, revoked_probe) if revoked_probe else float("nan")
    base_ns = per_call_ns(len, unrevoked)
    both = unrevoked + revoked_probe
    lookup_ns = (miss_ns * len(unrevoked) + hit_ns * len(revoked_probe)) / len(both)

    med_from = statistics.median(from_ms)
    med_verify = statistics.median(verify_ms)
    med_total = statistics.median(total_ms)
    maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"tenuo version={tenuo.__version__} python={sys.version.split()[0]}")
    print(f"ids: {n} UUID4 strings (36 chars, seed={args.seed}); lookups: "
          f"{len(unrevoked)} unrevoked + {len(revoked_probe)} revoked")
    print(f"entries={n}")
    print(f"bytes={size} ({size / 1e6:.3f} MB, {size / 2**20:.3f} MiB, {size / max(n, 1):.2f} B/entry)")
    print(f"gzip6_bytes={len(gz)} ({len(gz) / 1e6:.3f} MB, {len(gz) / max(n, 1):.2f} B/entry, "
          f"ratio={len(gz) / size:.3f}, gzip took {gzip_ms:.1f} ms)")
    print(f"build_ms={build_ms:.1f} (SrlBuilder().revoke_all(ids).version(1).build(key)); "
          f"to_bytes_ms={to_bytes_ms:.1f}")
    print(f"verify_load_ms={med_total:.2f} (median of {args.runs}: from_bytes={med_from:.2f} "
          f"verify={med_verify:.2f}; runs={', '.join(f'{x:.2f}' for x in total_ms)})")
    print(f"lookup_ns={lookup_ns:.1f} (unrevoked={miss_ns:.1f} revoked={hit_ns:.1f}; "
          f"py_call_baseline_ns={base_ns:.1f}, via Python binding)")
    print(f"max_rss_mb={maxrss_mb:.0f}")
    print(f"tenuo srl entries={n} bytes={size} gzip_bytes={len(gz)} build_ms={build_ms:.1f} "
          f"verify_load_ms={med_total:.2f} lookup_ns={lookup_ns:.1f}")


if __name__ == "__main__":
    main()
