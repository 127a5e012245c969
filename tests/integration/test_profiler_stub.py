"""A stand-in model server for the profiler's tests (no tests here; run as a script).

`python test_profiler_stub.py PORT MODE BALLAST_MIB COLUMNS [NAMES]` serves the model
server API of contract 1 on 127.0.0.1:PORT for a model whose signature is COLUMNS (a JSON
list of `fleet.schema.Column` dicts; `tests.support.stub_argv` gives the whole command).
It holds BALLAST_MIB MiB of written memory. With NAMES (a JSON list) it is a pack server:
each name answers under `/models/<name>/` and holds a ballast of its own. MODE: `ok`
(validates records with fleet.schema), `fail` (every prediction answers 500 and logs a
ValueError), `lenient` (accepts anything), `grow` (keeps 1 MiB per prediction request),
`flaky` (the first valid prediction request of each model succeeds, every later valid one
fails as in `fail`). Kept light (stdlib and pydantic only) so it starts in well under a
second.
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def serve(
    port: int,
    mode: str,
    ballast_mib: int,
    columns: list[dict[str, Any]],
    names: list[str] | None = None,
) -> None:
    from pydantic import ValidationError

    from fleet.schema import Column, batch_model

    print("stub: loading", flush=True)
    # written, so resident; one per model of a pack
    ballasts = [bytes([65 + i]) * (ballast_mib * 2**20) for i in range(len(names or [1]))]
    ballast = ballasts[0]
    prefixes = [f"/models/{n}" for n in names] if names else [""]
    answered: set[str] = set()
    leak: list[bytes] = []
    model = batch_model("stub", [Column.from_dict(c) for c in columns])

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like the real server
        disable_nagle_algorithm = True

        def log_message(self, *args: object) -> None:
            pass

        def send(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def prefix(self) -> str | None:
            """The prefix of the model the path is of; None for no model's."""
            return next((p for p in prefixes if self.path.startswith(p + "/")), None)

        def route(self) -> str | None:
            """The path under the model's prefix; None for no model's."""
            prefix = self.prefix()
            return None if prefix is None else self.path[len(prefix) :]

        def do_GET(self) -> None:
            ok = self.path in ("/readyz", "/livez") or self.route() in ("/readyz", "/livez")
            self.send(200 if ok else 404, {"ballast_bytes": len(ballast)})

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length", 0)))
            if self.route() != "/predict":
                return self.send(404, {"error": f"no model at {self.path}"})
            try:
                records = json.loads(raw)["records"]
            except (ValueError, KeyError, TypeError):
                if mode == "lenient":
                    return self.send(200, [])
                return self.send(400, {"error": "body is not JSON with records"})
            if mode == "fail":
                print("ValueError: the model raised on predict", file=sys.stderr, flush=True)
                return self.send(500, {"error": "prediction failed"})
            if mode != "lenient":
                try:
                    model.model_validate(records)
                except ValidationError as exc:
                    return self.send(422, {"error": str(exc)})
            if mode == "flaky" and self.prefix() in answered:
                print("ValueError: the model raised on predict", file=sys.stderr, flush=True)
                return self.send(500, {"error": "prediction failed"})
            answered.add(str(self.prefix()))
            if mode == "grow":
                leak.append(b"y" * 2**20)
            return self.send(200, [0.5] * len(records))

    ThreadingHTTPServer.daemon_threads = True
    print("stub: ready", flush=True)
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    names = json.loads(sys.argv[5]) if len(sys.argv) > 5 else None
    serve(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4]), names)
