"""A model's memory profile as a Pulumi dynamic resource.

The profiler runs the model image under random requests from its signature and measures
memory; it runs only in `create`/`update`, and only when the image changed. A runner
that does not have the image pulls it first, logged in with the stack's registry
credentials (`fleet.host.docker_cli.pull`). The measured numbers are the resource's
outputs, so they live in the stack's state and a fresh CI runner needs no cache. When the
profiler's gate fails the provider raises: the update stops before the Deployment, which
depends on these outputs, changes. A change of the memory policy alone re-derives request
and limit from the stored measurement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider, UpdateResult

from components.config import RegistryAuth
from components.image import login_of
from components.wire import outputs_of, plain, resolved_of
from fleet.resolved import ResolvedModel
from fleet.spec import MemoryPolicy

# Inputs whose change needs a new measurement.
MEASURE_KEYS = ("image", "content_hash", "requests", "pack")
# Inputs whose change only needs the recommendation re-derived from the measurement.
POLICY_KEYS = ("memory",)
NUMBERS = ("request_mib", "limit_mib", "idle_mib", "p95_mib", "peak_mib")
PACK_NUMBERS = ("baseline_p95_mib", "baseline_peak_mib", "marginal_p95_mib", "marginal_peak_mib")
"""What a packed model costs in a pack (`fleet.packing.PackSize`); 0 for a dedicated one."""
# Credentials are in none of the key lists above: a rotated password measures nothing
# again (and `wire.outputs_of` never copies them to the outputs).


@dataclass(frozen=True)
class MemoryProfileArgs:
    """What a memory profile measures."""

    resolved: ResolvedModel
    """The model (its signature drives the random requests)."""
    image: pulumi.Input[str]
    """The model image to run, by digest where known."""
    content_hash: pulumi.Input[str]
    """Content hash of that image; the profiler caches reports under it."""
    requests: int = 200
    """Random requests to send while measuring."""
    auth: RegistryAuth | None = None
    """Registry credentials to pull the image with when the runner does not have it (a
    fresh CI runner re-profiling an image built elsewhere); None for an open registry."""
    pack: bool = False
    """Also measure what the model adds to a pack server (a packed model)."""


def profile_inputs(args: MemoryProfileArgs) -> dict[str, Any]:
    return {
        "model": args.resolved.to_dict(),
        "image": args.image,
        "content_hash": args.content_hash,
        "memory": args.resolved.model.settings.memory.model_dump(mode="json"),
        "requests": args.requests,
        "pack": args.pack,
        "registry_server": args.auth.server if args.auth else None,
        "registry_username": args.auth.username if args.auth else None,
        "registry_password": args.auth.password if args.auth else None,
    }


def changed(olds: dict[str, Any], news: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    return [k for k in keys if olds.get(k) != news.get(k)]


def measure(props: dict[str, Any]) -> dict[str, Any]:
    """Run the profiler on the image (docker backend); the outputs carry the numbers.

    Raises `profiler.ProfileGateError` (naming the model and why) when the gate fails.
    """
    from profiler import LoadPlan, ProfileCache, ProfileOptions, profile
    from profiler.docker import DockerBackend

    props = plain(props)
    resolved = resolved_of(props)
    plan = LoadPlan(duration_s=None, requests=int(props["requests"]))
    packed = bool(props.get("pack"))
    report = profile(
        resolved,
        None,  # the image already holds the model; nothing is read from MLflow
        backend=DockerBackend(str(props["image"]), login_of(props)),
        options=ProfileOptions(plan=plan),
        content_hash=str(props["content_hash"]),
        # The local report cache spares a laptop a second run; CI relies on the state.
        cache=ProfileCache(),
        pack=packed,
    )
    mem = report.memory
    stats = {"idle_mib": mem.idle_mib, "p95_mib": mem.p95_mib, "peak_mib": mem.peak_mib}
    stats.update(dict.fromkeys(PACK_NUMBERS, 0.0))
    if packed:
        if report.pack is None:
            raise RuntimeError(f"model '{resolved.name}': the profile has no pack measurement")
        stats.update({k: float(getattr(report.pack, k)) for k in PACK_NUMBERS})
    return _outputs(
        props,
        report.recommendation.request_mib,
        report.recommendation.limit_mib,
        stats,
        report.summary(),
    )


def rederive(olds: dict[str, Any], news: dict[str, Any]) -> dict[str, Any]:
    """Request and limit under a new memory policy, from the measurement in state.

    `profiler.gate.rederive` derives them and applies the gate's ceiling.
    """
    from profiler.gate import rederive as derive

    olds, news = plain(olds), plain(news)
    policy = MemoryPolicy.model_validate(news["memory"])
    stats = {k: float(olds[k]) for k in ("idle_mib", "p95_mib", "peak_mib")}
    stats.update({k: float(olds.get(k) or 0.0) for k in PACK_NUMBERS})
    rec = derive(news["model"]["name"], stats["p95_mib"], stats["peak_mib"], policy)
    return _outputs(news, rec.request_mib, rec.limit_mib, stats, olds.get("summary", ""))


def _outputs(
    props: dict[str, Any], request: int, limit: int, stats: dict[str, float], summary: str
) -> dict[str, Any]:
    # The password stays an input (a secret in state), never a plain output.
    outs = outputs_of(props)
    outs.update(stats, request_mib=int(request), limit_mib=int(limit), summary=summary)
    return outs


def _state(olds: dict[str, Any]) -> dict[str, Any]:
    """Inputs (in state or new), plain; a state from before pack measurements has no
    "pack" (it was measured unpacked), which is no reason to measure again."""
    return {"pack": False, **plain(olds)}


class MemoryProfileProvider(ResourceProvider):
    """Profiles in create/update only; diff compares the image and the policy."""

    serialize_as_secret_always = False

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = measure(props)
        return CreateResult(id_=f"{props['model']['name']}@{props['content_hash']}", outs=outs)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        moved = changed(_state(olds), _state(news), MEASURE_KEYS + POLICY_KEYS)
        return DiffResult(changes=bool(moved), replaces=[], delete_before_replace=False)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        if changed(_state(olds), _state(news), MEASURE_KEYS) or "peak_mib" not in olds:
            return UpdateResult(outs=measure(news))
        return UpdateResult(outs=rederive(olds, news))

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        return None


class MemoryProfile(pulumi.dynamic.Resource, module="fleet", name="MemoryProfile"):
    """Memory measured for one model image, and the request/limit it leads to."""

    request_mib: pulumi.Output[int]
    """Memory request in MiB."""
    limit_mib: pulumi.Output[int]
    """Memory limit in MiB."""
    peak_mib: pulumi.Output[float]
    """Peak memory measured under load."""
    baseline_p95_mib: pulumi.Output[float]
    """In a pack: the server with the model's libraries (p95 under load)."""
    baseline_peak_mib: pulumi.Output[float]
    """In a pack: the same at its peak."""
    marginal_p95_mib: pulumi.Output[float]
    """In a pack: what the model adds (p95 under load)."""
    marginal_peak_mib: pulumi.Output[float]
    """In a pack: what the model adds at its peak."""

    def __init__(
        self, name: str, args: MemoryProfileArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        props = profile_inputs(args)
        props.update({k: None for k in (*NUMBERS, *PACK_NUMBERS)}, summary=None)
        super().__init__(MemoryProfileProvider(), name, props, opts)
