"""One tenant floods the service; how long does another tenant's one-sentence request take meanwhile?

Starts `knnbe-qdrant serve` on the store (the default one, or KNNBE_STORE / QDRANT_URL) on a free loopback port,
makes reader keys for two scratch tenants, and measures tenant "quiet"'s one-sentence maps and skill searches, first
alone and then while tenant "flood" keeps N requests of long sentences in flight (closed loop, from another process,
so that the measuring client does not share its interpreter with the flood). Prints a table, revokes the keys.

    .venv/bin/python scripts/experiments/tenant_flood.py [--clients 64] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import tempfile
import time
import uuid

import httpx

from knnbe_qdrant.service.keys import KeyRing
from knnbe_qdrant.service.loadtest import _free_port, _percentile, _start_server, _wait_ready
from knnbe_qdrant.store.connection import Connection

LONG = "Experience with " + ", ".join(f"tool{i} and framework{i}" for i in range(40))  # the encoder reads 256 tokens


def flood(base: str, secret: str, kind: str, clients: int, seconds: float) -> None:
    async def run() -> None:
        stop = time.perf_counter() + seconds
        headers = {"Authorization": f"Bearer {secret}"}
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=120,
                                     limits=httpx.Limits(max_connections=clients)) as http:
            async def one(w: int) -> None:
                i = 0
                while time.perf_counter() < stop:
                    text = f"{LONG} {w} {i}"
                    if kind == "search":
                        await http.get("/v1/skills/search", params={"q": text[:500], "limit": 50})
                    else:
                        await http.post("/v1/map", json={"sentences": [text], "top": 5})
                    i += 1

            await asyncio.gather(*(one(w) for w in range(clients)))

    asyncio.run(run())


def measure(base: str, secret: str, kind: str, seconds: float) -> list[float]:
    latencies = []
    stop = time.perf_counter() + seconds
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {secret}"}, timeout=120) as http:
        i = 0
        while time.perf_counter() < stop:
            started = time.perf_counter()
            if kind == "search":
                r = http.get("/v1/skills/search", params={"q": f"Python scripting {i}", "limit": 10})
            else:
                r = http.post("/v1/map", json={"sentences": [f"Writing Python scripts, take {i}"], "top": 5})
            r.raise_for_status()
            latencies.append(1000 * (time.perf_counter() - started))
            i += 1
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    connection = Connection.resolve()
    ring = KeyRing(connection.documents())
    run_id = uuid.uuid4().hex[:6]
    keys = {who: ring.create(role="reader", tenant=f"{who}-{run_id}") for who in ("quiet", "flood")}
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    rows = []
    try:
        with tempfile.TemporaryFile() as log:
            server = _start_server(connection, port, log)
            try:
                _wait_ready(base, server, log)
                for kind in ("map", "search"):
                    measure(base, keys["quiet"][1], kind, 2)  # warm
                    alone = measure(base, keys["quiet"][1], kind, 5)
                    flooder = multiprocessing.get_context("spawn").Process(
                        target=flood, args=(base, keys["flood"][1], kind, args.clients, args.seconds + 3))
                    flooder.start()
                    time.sleep(3)
                    under = measure(base, keys["quiet"][1], kind, args.seconds)
                    flooder.join()
                    rows.append((kind, alone, under))
            finally:
                server.terminate()
                server.wait(60)
    finally:
        for key, _ in keys.values():
            ring.revoke(key.name)
    print(f"{'flood and request':<22} {'alone p50/p95 ms':>18} {'under flood p50/p95/max ms':>28} {'n':>5}")
    for kind, alone, under in rows:
        print(f"{kind + ' / ' + kind:<22} {_percentile(alone, .5):>8.0f} /{_percentile(alone, .95):>6.0f}   "
              f"{_percentile(under, .5):>10.0f} /{_percentile(under, .95):>6.0f} /{max(under):>6.0f} {len(under):>6}")
    print(f"{args.clients} concurrent requests of tenant 'flood' ({len(LONG)}-character sentences), one at a time "
          "of tenant 'quiet'")


if __name__ == "__main__":
    main()
