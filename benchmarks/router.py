"""The router's cost per hop: a model server called directly, through nginx, through the router.

    uv run python -m benchmarks.router [--tracking-uri URI] [--model NAME]
        [--backend model|echo] [--concurrency 1 16 64] [--seconds 8] [--rounds 3]

One model server (the real model server of `fleet.serving`, or with `--backend echo` a
trivial uvicorn app that isolates the proxies' own cost), and in front of it:
- nginx (Debian's), 1 worker, upstream keepalive: a reference proxy hop;
- the router (`python -m fleet.router`, uvicorn, 1 worker) with one route to it, as
  configured by default (at most `backend_calls` calls in flight to the model server;
  requests beyond wait and go together) and with `backend_calls` 0 (every request its
  own call, a plain proxy).
The same lean load loop (`Load`: one-record requests from `concurrency` keep-alive
clients) measures each, interleaved (in an order rotated every round), for `rounds`
rounds at each concurrency. The table shows medians over rounds; ratios and differences
to direct are medians of the per-round ones, as the machine's speed drifts over a run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import psutil
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from fleet.host.model_server import server_command
from fleet.host.model_store import ModelStore
from fleet.host.processes import Child, Supervisor, free_port, wait_ready
from fleet.host.registry import Registry
from fleet.resolved import ResolvedModel
from fleet.routes import RouterLimits, build_routes_config
from fleet.schema import random_records
from fleet.specfile import load_fleet

ROOT = Path(__file__).resolve().parent.parent
NGINX = "/usr/sbin/nginx"
NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  upstream model {{ server 127.0.0.1:{backend}; keepalive 128; keepalive_requests 1000000; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://model;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""
ECHO_APP = "tests.support:echo_backend"
ROUTER = "router"
SINGLE = "router, backend_calls 0"


class Load:
    """A lean HTTP/1.1 load loop: one keep-alive connection per client, requests
    pre-encoded, so that on a 2-core machine the client takes as little CPU as possible
    from the servers it measures (an httpx client costs about 1 ms of CPU per request).
    """

    def __init__(self, url: str, bodies: list[Any]) -> None:
        u = httpx.URL(url)
        self.host, self.port = u.host, u.port or 80
        self.requests = [
            b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (u.raw_path, u.host.encode(), len(b), b)
            for b in (json.dumps(body).encode() for body in bodies)
        ]

    async def _client(self, deadline: float, lat: list[float], errors: list[int]) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        i = 0
        try:
            while time.perf_counter() < deadline:
                req = self.requests[i % len(self.requests)]
                i += 1
                t0 = time.perf_counter()
                writer.write(req)
                try:
                    status = await self._response(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    # The server closed the keep-alive connection: count it, reconnect.
                    errors.append(0)
                    writer.close()
                    reader, writer = await asyncio.open_connection(self.host, self.port)
                    continue
                if status == 200:
                    lat.append(time.perf_counter() - t0)
                else:
                    errors.append(status)
        finally:
            writer.close()

    @staticmethod
    async def _response(reader: asyncio.StreamReader) -> int:
        head = await reader.readuntil(b"\r\n\r\n")
        length = -1
        chunked = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                await reader.readexactly(size + 2)
                if size == 0:
                    break
        elif length >= 0:
            await reader.readexactly(length)
        return int(head[9:12])

    def run(self, concurrency: int, seconds: float) -> Result:
        async def go() -> Result:
            lat: list[float] = []
            errors: list[int] = []
            start = time.perf_counter()
            await asyncio.gather(
                *(self._client(start + seconds, lat, errors) for _ in range(concurrency))
            )
            elapsed = time.perf_counter() - start
            ms = sorted(x * 1000 for x in lat)
            return Result(
                rps=len(ms) / elapsed,
                p50_ms=ms[len(ms) // 2] if ms else float("nan"),
                p99_ms=ms[min(len(ms) - 1, int(len(ms) * 0.99))] if ms else float("nan"),
                errors=len(errors),
            )

        return uvloop.run(go())


@dataclass(frozen=True)
class Result:
    """One measurement."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    hop_cpu_ms: float = 0.0
    """CPU time of the proxy (nginx or router) per successful request."""
    backend_cpu_ms: float = 0.0
    """CPU time of the model server per successful request."""
    batch: float = 0.0
    """Mean records per model call in the model server (0: not reported)."""


def batch_totals(base_url: str) -> tuple[float, float]:
    """(records, model calls) so far from the model server's `fleet_batch_size`
    histogram; (0, 0) for a backend without it."""
    records = calls = 0.0
    try:
        text = httpx.get(base_url + "/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.endswith("fleet_batch_size_sum"):
                    records += sample.value
                elif sample.name.endswith("fleet_batch_size_count"):
                    calls += sample.value
    except (httpx.HTTPError, ValueError):  # no such endpoint, or not Prometheus text
        return 0.0, 0.0
    return records, calls


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` and its descendants."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            times = proc.cpu_times()
            total += times.user + times.system
    except psutil.NoSuchProcess:
        pass
    return total


def supervisor(stack: ExitStack) -> Supervisor:
    """The supervisor of this run's child processes, each in its own session; all stopped
    (with their children) when `stack` closes. Their logs and files (nginx's config, the
    routes config) go to a temporary folder, removed after them."""
    logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-router-")))
    started = Supervisor(logs)
    stack.callback(started.stop_all)
    return started


def start(
    children: Supervisor,
    name: str,
    argv: list[str],
    url: str,
    *,
    env: dict[str, str] | None = None,
    path: str = "/readyz",
    timeout_s: float = 240,
) -> Child:
    """Start `argv` and wait until `GET <url><path>` answers 200."""
    started = children.start(name, argv, env or {}, url)
    for _, why in wait_ready([started], timeout_s, path=path):
        raise RuntimeError(f"{name} never ready: {why}\n{started.log_tail()}")
    return started


def start_backend(
    children: Supervisor, args: argparse.Namespace
) -> tuple[ResolvedModel, str, str, int]:
    """(resolved model, base URL, description, pid) of the model server under test."""
    fleet = load_fleet(ROOT / "models.yaml").only([args.model])
    registry = Registry.from_environment(args.tracking_uri)
    resolved = registry.resolve(fleet)[0]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    if args.backend == "echo":
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            ECHO_APP,
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ]
        echo = start(children, "echo", argv, url)  # it answers any GET
        # The echo app takes the model name from the first path segment.
        return resolved, f"{url}/{resolved.name}", "echo (uvicorn, trivial ASGI app)", echo.pid
    store = ModelStore.from_environment()
    tag = store.import_model(resolved, registry)
    argv, env = server_command(resolved, port, store, bento_model_tag=tag)
    server = start(children, "model-server", argv, url, env=env)
    batching = resolved.model.settings.batching
    what = (
        f"model server, {resolved.name} (batching {batching.enabled}, "
        f"max {batching.max_batch_size}, {batching.max_latency_ms} ms)"
    )
    return resolved, url, what, server.pid


def start_nginx(children: Supervisor, backend_url: str) -> tuple[str, int]:
    tmp = Path(tempfile.mkdtemp(prefix="nginx-", dir=children.log_dir))
    backend = httpx.URL(backend_url)
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, backend=backend.port, port=port))
    url = f"http://127.0.0.1:{port}"
    argv = [NGINX, "-c", str(conf), "-p", str(tmp)]
    # Ready when the backend's readiness probe answers through it.
    nginx = start(children, "nginx", argv, url, timeout_s=20)
    return url + backend.raw_path.decode().rstrip("/"), nginx.pid


def plain_router_argv(config: Path, port: int) -> list[str]:
    """The router's app under uvicorn's own protocol and connection handling, not the
    bounded protocol `python -m fleet.router` runs it with."""
    code = (
        "import sys, uvicorn; from fleet.router.app import create_app; "
        "from fleet.router.config import load_routes_config; "
        "uvicorn.run(create_app(load_routes_config(sys.argv[1])), "
        "port=int(sys.argv[2]), log_level='error')"
    )
    return [sys.executable, "-c", code, str(config), str(port)]


def start_router(
    children: Supervisor, resolved: ResolvedModel, backend_url: str, backend_calls: int
) -> tuple[str, int]:
    fleet = load_fleet(ROOT / "models.yaml").only([resolved.name])
    config = build_routes_config(fleet, [resolved], lambda _: backend_url)
    config["limits"]["backend_calls"] = backend_calls
    tmp = Path(tempfile.mkdtemp(prefix="router-", dir=children.log_dir))
    (tmp / "routes.json").write_text(json.dumps(config))
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "fleet.router",
        "--config",
        str(tmp / "routes.json"),
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    url = f"http://127.0.0.1:{port}"
    router = start(children, f"router-{backend_calls}", argv, url, timeout_s=60)
    return url + resolved.model.route, router.pid


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with ExitStack() as stack:
        children = supervisor(stack)
        resolved, backend, what, backend_pid = start_backend(children, args)
        backend_base = "http://" + httpx.URL(backend).netloc.decode()
        nginx, nginx_pid = start_nginx(children, backend)
        default_calls = RouterLimits().backend_calls
        router, router_pid = start_router(children, resolved, backend, default_calls)
        single, single_pid = start_router(children, resolved, backend, 0)
        # CPU per request of the hop itself (nginx, router) and of the model server: on
        # a shared machine CPU time is steadier than latency.
        hop = {"direct": None, "nginx": nginx_pid, ROUTER: router_pid, SINGLE: single_pid}
        records = random_records(resolved.inputs, 200, seed=0)
        wrapped = [{"records": [r]} for r in records]
        targets = {
            "direct": Load(backend + "/predict", wrapped),
            "nginx": Load(nginx + "/predict", wrapped),
            ROUTER: Load(router, records),
            SINGLE: Load(single, records),
        }
        results: dict[int, dict[str, list[Result]]] = {}
        for c in args.concurrency:
            results[c] = {name: [] for name in targets}
            for load in targets.values():  # warm up every pool
                load.run(c, 1.0)
            names = list(targets)
            for i in range(args.rounds):
                # Rotate the order each round so that no target always follows another.
                k = i % len(names)
                for name in names[k:] + names[:k]:
                    load = targets[name]
                    pid = hop[name]
                    batches = batch_totals(backend_base)
                    before = cpu_s(pid) if pid else 0.0, cpu_s(backend_pid)
                    res = load.run(c, args.seconds)
                    n = max(1, round(res.rps * args.seconds))
                    after = batch_totals(backend_base)
                    calls = after[1] - batches[1]
                    res = replace(
                        res,
                        hop_cpu_ms=(cpu_s(pid) - before[0]) * 1000 / n if pid else 0.0,
                        backend_cpu_ms=(cpu_s(backend_pid) - before[1]) * 1000 / n,
                        batch=(after[0] - batches[0]) / calls if calls else 0.0,
                    )
                    results[c][name].append(res)
                    print(
                        f"c={c:<3} {name:<7} {res.rps:8.1f} req/s  p50 {res.p50_ms:7.2f} ms  "
                        f"p99 {res.p99_ms:7.2f} ms  errors {res.errors}  hop CPU "
                        f"{res.hop_cpu_ms:.3f} ms/req  backend CPU {res.backend_cpu_ms:.3f} ms/req"
                        f"  batch {res.batch:.1f}",
                        file=sys.stderr,
                    )
    return {"backend": what, "results": results}


def table(data: dict[str, Any]) -> str:
    """Medians over rounds; the ratios and differences to direct are medians of the
    per-round ones (measured seconds apart), which the machine's drift affects least."""
    med = statistics.median
    lines = [
        f"Backend: {data['backend']}",
        "",
        "| c | path | req/s | req/s vs direct | p50 | p50 - direct | p99 | CPU/req hop | "
        "CPU/req model server | mean batch | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c, by in data["results"].items():
        direct = by["direct"]
        for name, runs in by.items():
            pairs = list(zip(runs, direct, strict=True))
            vs = "" if name == "direct" else f"{med(a.rps / b.rps for a, b in pairs):.0%}"
            added = (
                "" if name == "direct" else f"{med(a.p50_ms - b.p50_ms for a, b in pairs):+.2f} ms"
            )
            hop = "" if name == "direct" else f"{med(x.hop_cpu_ms for x in runs):.2f} ms"
            lines.append(
                f"| {c} | {name} | {med(x.rps for x in runs):.0f} | {vs} | "
                f"{med(x.p50_ms for x in runs):.2f} ms | {added} | "
                f"{med(x.p99_ms for x in runs):.1f} ms | {hop} | "
                f"{med(x.backend_cpu_ms for x in runs):.2f} ms | "
                f"{med(x.batch for x in runs):.1f} | {sum(x.errors for x in runs)} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracking-uri", default=None, help="registry holding the demo models")
    parser.add_argument("--model", default="match_probability_1_TAXI_trafficaware")
    parser.add_argument("--backend", choices=["model", "echo"], default="model")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not shutil.which(NGINX):
        sys.exit(f"{NGINX} not found (apt-get install nginx-light)")
    started = time.time()
    data = measure(args)
    print(table(data))
    load = os.getloadavg()
    print(
        f"\n{time.time() - started:.0f} s; load average at the end {load[0]:.1f}; "
        f"{os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
