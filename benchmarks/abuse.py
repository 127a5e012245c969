"""What abusive clients cost the router: refusals, stalled uploads, idle connections.

    uv run python -m benchmarks.abuse [--uploads 300] [--idle 2000] [--seconds 3]

1. Refusing bad input, in this process (the router's validation, `RouteSchema.parse`):
   CPU per body for a valid 1,000-record batch and for bodies that are refused (records
   with 90 unknown fields each, records with every field of the wrong type, a 1 MB field
   name), with the size of the answer.
2. A running router (`python -m fleet.router`, the echo stand-in behind it) under
   `--uploads` connections that each declare a 1 MiB body, send 1,000,000 bytes and stall,
   plus `--idle` connections that send nothing. Measured twice, side by side: with the
   default limits, and with them lifted (bodies held without bound, read timeouts of 10
   minutes, uvicorn's own protocol: the router before it bounded its clients). Reported:
   the router's RSS before, at the peak and after; how the uploads ended; how long until
   the router had closed them; and one normal client's latency during the flood, next to
   its latency before (the lean load loop of benchmarks/router.py, c=1). Times are from
   the start of the flood; what is still open 20 s after the latency run is left open.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psutil

from benchmarks.router import ECHO_APP, Load, plain_router_argv, start, supervisor
from fleet.host.processes import Supervisor, free_port
from fleet.router.config import RouterLimits
from fleet.router.validation import RequestProblem, RouteSchema
from fleet.schema import Column, random_records

COLUMNS = [Column(n, "double") for n in ("a", "b", "c", "d", "e")]
UNBOUNDED = {
    "buffered_body_bytes": 2**40,
    "body_timeout_s": 600.0,
    "header_timeout_s": 600.0,
    "client_connections": 100_000,
}


def refusals() -> list[tuple[str, float, float, int]]:
    """(body, MB, median CPU ms to parse or refuse it, answer bytes)."""
    schema = RouteSchema("m", COLUMNS, 1000)
    valid = random_records(COLUMNS, 1000, seed=1)
    unknown = [{**r, **{f"unknown_{k}": 1.0 for k in range(90)}} for r in valid]
    wrong = [{c.name: "x" for c in COLUMNS} for _ in range(1000)]
    name = {**valid[0], "x" * 1_000_000: 1}
    bodies = {
        "valid, 1,000 records": valid,
        "1,000 records x 90 unknown fields": unknown,
        "1,000 records, every field wrong": wrong,
        "1 record with a 1 MB field name": name,
    }
    out = []
    for label, body in bodies.items():
        raw = json.dumps(body).encode()
        times, answer = [], 0
        for _ in range(15):
            start_cpu = time.process_time()
            try:
                schema.parse(raw)
            except RequestProblem as problem:
                answer = len(problem.body())
            times.append(time.process_time() - start_cpu)
        out.append((label, len(raw) / 1e6, statistics.median(times) * 1000, answer))
    return out


def start_router(children: Supervisor, echo: str, limits: dict[str, Any], bounded: bool) -> Any:
    columns = [{"name": "x", "type": "double", "required": True}]
    route = {"path": "/ok", "model": "ok", "version": 1, "backend": f"{echo}/ok"}
    config = {"version": 1, "limits": limits, "routes": [{**route, "inputs": columns}]}
    tmp = Path(tempfile.mkdtemp(prefix="router-", dir=children.log_dir))
    (tmp / "routes.json").write_text(json.dumps(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    if bounded:
        argv = [sys.executable, "-m", "fleet.router", "--config", str(tmp / "routes.json")]
        argv += ["--port", str(port), "--log-level", "error"]
    else:  # uvicorn's own protocol and connection handling, the app as ever
        argv = plain_router_argv(tmp / "routes.json", port)
    return start(children, f"router-{'bounded' if bounded else 'unbounded'}", argv, url)


async def flood(port: int, uploads: int, idle: int) -> tuple[list[Any], list[Any]]:
    """Open the stalled uploads and the idle connections; (uploads, idle) as opened."""

    async def upload() -> Any:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = b"POST /ok HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\n"
        writer.write(head + b"Content-Length: 1048576\r\n\r\n[" + b" " * 999_999)
        return reader, writer

    async def connect() -> Any:
        return await asyncio.open_connection("127.0.0.1", port)

    up = await asyncio.gather(*(upload() for _ in range(uploads)))
    conns = []
    for i in range(0, idle, 200):
        conns += await asyncio.gather(*(connect() for _ in range(min(200, idle - i))))
    return list(up), conns


async def ending(reader: asyncio.StreamReader, since: float, limit_s: float) -> tuple[int, float]:
    """(status of the answer, 0 for none, -1 still open after `limit_s`; seconds from
    `since` until the connection closed)."""
    status = 0
    try:
        data = b""
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), limit_s)
            if not chunk:
                break
            data += chunk
        status = int(data[9:12]) if data.startswith(b"HTTP/1.1") else 0
    except (TimeoutError, ConnectionError):
        return -1, time.monotonic() - since  # still open
    return status, time.monotonic() - since


def run_flood(router: Any, args: argparse.Namespace) -> dict[str, Any]:
    process = psutil.Process(router.pid)
    normal = Load(router.url + "/ok", [{"x": 1.5}])
    before = normal.run(1, args.seconds)
    rss_before = process.memory_info().rss

    async def go() -> dict[str, Any]:
        began = time.monotonic()
        ups, idle = await flood(int(router.url.rsplit(":", 1)[1]), args.uploads, args.idle)
        await asyncio.sleep(1.0)
        peak = process.memory_info().rss
        during = await asyncio.to_thread(normal.run, 1, args.seconds)
        peak = max(peak, process.memory_info().rss)
        limit_s = 20.0
        ends, idle_ends = await asyncio.gather(
            asyncio.gather(*(ending(r, began, limit_s) for r, _ in ups)),
            asyncio.gather(*(ending(r, began, limit_s) for r, _ in idle)),
        )
        for _, writer in [*ups, *idle]:
            writer.close()
        return {"peak": peak, "during": during, "ends": ends, "idle_ends": idle_ends}

    result = asyncio.run(go())
    time.sleep(1.0)
    result.update(before=before, rss_before=rss_before, rss_after=process.memory_info().rss)
    return result


def describe(name: str, r: dict[str, Any]) -> list[str]:
    mib = 2**20
    statuses: dict[int, int] = {}
    for status, _ in r["ends"]:
        statuses[status] = statuses.get(status, 0) + 1
    closed = [t for s, t in r["ends"] if s != -1]
    idle_closed = [t for s, t in r["idle_ends"] if s != -1]
    ended = ", ".join(
        f"{n} x {'still open' if s == -1 else (s or 'closed')}" for s, n in sorted(statuses.items())
    )
    return [
        f"| {name} | {r['rss_before'] / mib:.0f} MiB | {r['peak'] / mib:.0f} MiB | "
        f"{r['rss_after'] / mib:.0f} MiB | {ended} | "
        f"{max(closed) if closed else float('nan'):.1f} s | "
        f"{len(idle_closed)}/{len(r['idle_ends'])} in "
        f"{max(idle_closed) if idle_closed else float('nan'):.1f} s | "
        f"{r['before'].p50_ms:.2f} / {r['before'].p99_ms:.2f} ms | "
        f"{r['during'].p50_ms:.2f} / {r['during'].p99_ms:.2f} ms, "
        f"{r['during'].errors} errors |"
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--uploads", type=int, default=300)
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=3.0, help="per latency measurement")
    args = parser.parse_args()
    started = time.time()
    print("| body | MB | CPU to parse or refuse | answer |\n|---|---|---|---|")
    for label, mb, ms, answer in refusals():
        print(f"| {label} | {mb:.2f} | {ms:.2f} ms | {answer or '(accepted)'} B |")
    print()
    defaults = RouterLimits().model_dump()
    with ExitStack() as stack:
        children = supervisor(stack)
        port = free_port()
        echo = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "uvicorn", ECHO_APP, "--port", str(port)]
        start(children, "echo", [*argv, "--log-level", "warning", "--no-access-log"], echo)
        lines = [
            f"{args.uploads} stalled 1 MiB uploads and {args.idle} idle connections:",
            "",
            "| router | RSS before | RSS peak | RSS after | uploads ended | last upload "
            "closed | idle closed | normal p50 / p99 before | during the flood |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, limits, bounded in (
            ("limits lifted (as before)", {**defaults, **UNBOUNDED}, False),
            ("default limits", defaults, True),
        ):
            router = start_router(children, echo, limits, bounded)
            lines += describe(name, run_flood(router, args))
            router.stop()
    print("\n".join(lines))
    print(f"\n{time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
