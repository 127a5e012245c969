"""MLflow access: one `Registry` (tracking URI and credentials), used by every caller.

MLflow reads its URIs and credentials from process-wide state (the environment and
`mlflow.set_tracking_uri`). Here they are explicit instead: every MLflow call runs in a
child process (`fleet.host.worker`) whose environment carries this registry's URI and
credentials, so two registries (or two tokens) on two threads never mix, and this
process never imports MLflow for it.

`Registry.resolve` pins every model of a fleet to a version: a version or alias becomes
a concrete version, a model URI, a run id and the input columns of the signature. The
whole fleet is checked and every problem reported at once, before anything is built or
deployed. Reading the registry is the only thing the Pulumi program does at program
time (previews stay reads).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from fleet.errors import ResolutionError
from fleet.host.environment import HOST, LOCAL_HOME, HostEnvironment, child_env
from fleet.resolved import ResolvedModel
from fleet.spec import Fleet

# One try, a short timeout: MLflow retries a refused connection for about four minutes
# per call, so an unreachable server would hang a validation or preview for hours.
PROBE_TIMEOUT_S = 20.0
ANSWER_PREFIX = "fleet-worker-answer: "


def local_tracking_uri(home: Path = LOCAL_HOME) -> str:
    """The local sqlite registry under `home` (default `.fleet/mlflow.db`)."""
    return f"sqlite:///{home.resolve() / 'mlflow.db'}"


@dataclass(frozen=True)
class Registry:
    """An MLflow tracking server or local store, with the credentials to read it."""

    uri: str
    """Tracking (and registry) URI: `http(s)://...`, `sqlite:///...`, a folder."""
    token: str | None = field(default=None, repr=False)
    """Bearer token (`MLFLOW_TRACKING_TOKEN`)."""
    username: str | None = None
    """Basic-auth user (`MLFLOW_TRACKING_USERNAME`)."""
    password: str | None = field(default=None, repr=False)
    """Basic-auth password (`MLFLOW_TRACKING_PASSWORD`)."""

    @staticmethod
    def from_environment(
        uri: str | None = None, env: HostEnvironment = HOST, home: Path = LOCAL_HOME
    ) -> Registry:
        """`uri`, else `MLFLOW_TRACKING_URI`, else the local registry; credentials from `env`."""
        return Registry(
            uri=uri or env.tracking_uri or local_tracking_uri(home),
            token=env.tracking_token,
            username=env.tracking_username,
            password=env.tracking_password,
        )

    def with_credentials(
        self, token: str | None = None, username: str | None = None, password: str | None = None
    ) -> Registry:
        """This registry read with the credentials given (a stack's secrets) instead."""
        if not (token or username):
            return self
        return Registry(self.uri, token=token, username=username, password=password)

    def has_credentials(self) -> bool:
        return bool(self.token or self.username)

    def is_local(self, home: Path = LOCAL_HOME) -> bool:
        """Whether this is the default local registry under `home`."""
        return self.uri == local_tracking_uri(home)

    def env(self) -> dict[str, str]:
        """The environment of a child process that reads this registry."""
        env = {
            "MLFLOW_TRACKING_URI": self.uri,
            "MLFLOW_REGISTRY_URI": self.uri,
            # MLflow checks a model's pip requirements against the environment on load.
            "MLFLOW_ENABLE_LOGGED_MODEL_ENV_VALIDATION": "false",
        }
        for key, value in (
            ("MLFLOW_TRACKING_TOKEN", self.token),
            ("MLFLOW_TRACKING_USERNAME", self.username),
            ("MLFLOW_TRACKING_PASSWORD", self.password),
        ):
            if value:
                env[key] = value
        return env

    def resolve(self, fleet: Fleet) -> list[ResolvedModel]:
        """Every model of `fleet` pinned to a version; ResolutionError lists all problems."""
        models = fleet.resolved_models()
        missing = _missing_sqlite(self.uri)
        if missing is not None:
            # MLflow would create an empty registry there and then find none of the models.
            raise ResolutionError(
                f"no MLflow registry at {self.uri} ({missing} does not exist): make one with "
                "`fleet demo-registry`, or point --tracking-uri / MLFLOW_TRACKING_URI at yours"
            )
        self.check_access()
        answer = self.call("resolve", {"models": [m.model_dump(mode="json") for m in models]})
        if answer["problems"]:
            raise ResolutionError(answer["problems"])
        return [ResolvedModel.from_dict(r) for r in answer["resolved"]]

    def has_models(self) -> bool:
        """Whether the registry holds any registered model (False when it does not exist)."""
        if _missing_sqlite(self.uri) is not None:
            return False
        return bool(self.call("has-models", {})["has_models"])

    def call(
        self,
        command: str,
        request: dict[str, Any],
        *,
        extra_env: dict[str, str] | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Run `fleet.host.worker <command>` against this registry; its JSON answer.

        The worker writes progress lines and, last, its answer (one JSON line after
        `ANSWER_PREFIX`) to stdout. A failure becomes a ResolutionError quoting its log.
        """
        argv = [sys.executable, "-m", "fleet.host.worker", command]
        env = child_env({**self.env(), **(extra_env or {})})
        answer: dict[str, Any] | None = None
        with tempfile.TemporaryFile("w+") as log:
            proc = subprocess.Popen(
                argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True
            )
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(json.dumps(request))
            proc.stdin.close()
            for line in proc.stdout:
                if line.startswith(ANSWER_PREFIX):
                    answer = json.loads(line.removeprefix(ANSWER_PREFIX))
                elif progress is not None:
                    progress(line.rstrip())
            code = proc.wait()
            log.seek(0)
            tail = "\n".join(log.read().strip().splitlines()[-15:])
        if code != 0 or answer is None:
            raise ResolutionError(f"MLflow access at {self.uri} failed ({command}):\n{tail}")
        return answer

    def check_access(self) -> None:
        """ResolutionError when a remote registry cannot be reached or refuses our
        credentials; one short call, so the problem is said plainly (MLflow itself retries
        for minutes, and BentoML's import hides its error). Nothing for a local registry."""
        if not self.uri.startswith(("http://", "https://")):
            return
        url = self.uri.rstrip("/") + "/api/2.0/mlflow/registered-models/search"
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        auth = (self.username, self.password or "") if self.username else None
        try:
            response = httpx.get(
                url,
                params={"max_results": 1},
                headers=headers,
                auth=auth,
                timeout=PROBE_TIMEOUT_S,
            )
        except httpx.HTTPError as exc:
            raise ResolutionError(
                f"cannot reach the MLflow registry at {self.uri}: {type(exc).__name__}: {exc}"
            ) from exc
        if response.status_code in (401, 403):
            raise ResolutionError(
                f"the MLflow registry at {self.uri} refused the credentials (HTTP "
                f"{response.status_code}): set MLFLOW_TRACKING_TOKEN or "
                "MLFLOW_TRACKING_USERNAME/PASSWORD (a stack: fleet:mlflowToken)"
            )
        # Anything else (a rate limit, a server error) gets MLflow's usual retries.


def _missing_sqlite(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI when it does not exist, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = Path(uri.removeprefix("sqlite:///").split("?")[0])
    return None if path.exists() or path.name == ":memory:" else path
