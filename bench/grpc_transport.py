"""Kv service over gRPC: unary calls vs the BatchCommands stream.

``python -m bench.grpc_transport [--seconds S] [--threads 1,4,16,64]``

Starts a store server (in-memory engine, so the transport dominates) in a
child process, then for each client thread count runs ``raw_get``,
``raw_put`` and a small transaction (read one key, write it back: 2 TSO calls,
get, prewrite, commit) for ``S`` seconds through :class:`GrpcKvBackend` in
unary and in batching mode, and prints operations per second. Baseline: the
same operations on an in-process embedded store.
Measured, never asserted (DESIGN.md §6).
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable

from kvstore.client import Client, Transaction
from kvstore.client.backend import KvBackend, TsoBackend
from kvstore.client.grpc_backend import GrpcKvBackend, GrpcTsoBackend
from kvstore.server.embedded import EmbeddedStore
from kvstore.server.launcher import StoreProcess
from kvstore.storage import MemoryEngine


def measure(op: Callable[[int, int], None], threads: int, seconds: float) -> float:
    stop = threading.Event()
    counts = [0] * threads

    def worker(t: int) -> None:
        i = 0
        while not stop.is_set():
            op(t, i)
            i += 1
        counts[t] = i

    ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    start = time.perf_counter()
    for t in ts:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in ts:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--threads", default="1,4,16,64")
    args = p.parse_args(argv)
    thread_counts = [int(x) for x in args.threads.split(",")]
    value = b"v" * 100

    embedded = EmbeddedStore(MemoryEngine(), durable=False)
    embedded.raw_put(b"key", value)
    with StoreProcess(extra_args=["--no-durable"]) as server:
        unary = GrpcKvBackend(server.address)
        batched = GrpcKvBackend(server.address, batching=True)
        unary.raw_put(b"key", value)
        tso = GrpcTsoBackend(server.address)
        backends: list[tuple[str, KvBackend, TsoBackend]] = [
            ("embedded", embedded, embedded),
            ("unary", unary, tso),
            ("batch", batched, tso),
        ]
        for threads in thread_counts:
            for name, b, ts in backends:
                client = Client(b, ts)

                def get(t: int, i: int, b: KvBackend = b) -> None:
                    b.raw_get(b"key")

                def put(t: int, i: int, b: KvBackend = b) -> None:
                    b.raw_put(b"k%d-%d" % (t, i % 1000), value)

                def txn(t: int, i: int, c: Client = client) -> None:
                    key = b"txn-%d" % t

                    def body(tx: Transaction) -> None:
                        tx.put(key, (tx.get(key) or b"")[:8] + b"x")

                    c.transaction(body)

                g = measure(get, threads, args.seconds)
                w = measure(put, threads, args.seconds)
                x = measure(txn, threads, args.seconds)
                print(
                    f"{threads:>4} threads  {name:<9} raw_get {g:>8.0f}/s"
                    f"  raw_put {w:>8.0f}/s  txn {x:>7.0f}/s"
                )
        unary.close()
        batched.close()
        tso.close()
    embedded.close()


if __name__ == "__main__":
    main()
