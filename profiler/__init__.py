"""The pre-deploy memory profiler: measure each model's server before it ships.

For one model, `profile(resolved, registry)`:
1. starts its model server in a backend: `process` (local processes from this virtualenv,
   `fleet.host.model_server`) or `docker` (the model image from `fleet.host.images` as a
   container);
2. waits until `GET /readyz` answers 200, at most `ready_timeout_s`;
3. sends one warm-up request, then measures idle memory over `idle_s` quiet seconds;
4. sends random valid requests generated from the signature (`fleet.schema`), single
   records and batches at several concurrencies, for a duration or a request count, then
   a few invalid requests that must get a 4xx;
5. samples memory every `sample_interval_s` in a thread throughout: PSS summed over the
   server's process tree (process) or the container's memory cgroup (docker; cgroup v1
   `rss + mapped_file`, v2 `memory.current - inactive_file`);
6. recommends the pod's memory and applies the gate;
7. with `pack=True` (`fleet profile --pack`), runs a second server in pack mode that holds
   the model twice (its name and `<name>--twin`), warms up, idles and loads both copies,
   and reports what the model costs in a pack (`PackStats`):

       marginal_x = max(twin_x - single_x, 0)    baseline_x = single_x - marginal_x

   for x in idle, p95 and peak, the difference taken in the servers' private memory (USS,
   or the cgroup's anonymous memory: `profiler.memory`), which other processes do not
   move as they move PSS; a failed request of the twin run fails the gate too.

The policy (fields of `fleet.spec.MemoryPolicy`, set per model in models.yaml):

    request_mib = ceil(p95_mib * (1 + request_margin_percent / 100))
    limit_mib   = ceil(max(peak_mib * limit_factor, peak_mib + limit_floor_mib))

p95 and peak are over the samples taken under load (MiB = 2**20 bytes). The limit is at
least the request. A model with `fixed_mib` is not profiled: request = limit = fixed_mib.

The gate raises `ProfileGateError` (the CLI exits 1) when the server is never ready (the
message quotes the server's last log lines), a valid request fails ("predictions failed"),
an invalid request is accepted, or the peak is above `ceiling_mib`.

The report (`Report.to_dict()`, stored as `.fleet/profiles/<content_hash>.json`; a failed
one under `.fleet/profiles/failed/`):

    {"schema": 1, "model": str, "version": int, "model_uri": str, "content_hash": str,
     "backend": "process" | "docker", "created": ISO-8601 UTC,
     "memory": {"idle_mib", "p95_mib", "peak_mib": float, "samples": int,
                "interval_s": float, "source": str},
     "load": {"duration_s": float, "requests": int, "records": int, "errors": int,
              "req_per_s": float, "p50_ms": float | null, "p99_ms": float | null,
              "first_errors": [str], "invalid_sent": int, "invalid_accepted": [str],
              "phases": [{"concurrency", "batch_size", "requests", "errors",
                          "req_per_s", "p50_ms", "p99_ms"}]},
     "policy": {MemoryPolicy fields}, "recommendation": {"request_mib", "limit_mib": int},
     "pack": null | {"baseline_idle_mib", "baseline_p95_mib", "baseline_peak_mib",
                     "marginal_idle_mib", "marginal_p95_mib", "marginal_peak_mib": float,
                     "source": str},
     "problems": [str], "passed": bool}

(`pack` is null, or absent in reports written before it existed, unless measured.)

The cache is keyed by the model image's content hash (`fleet.host.images.content_hash`): a
model whose hash has a passing report is not profiled again; its recommendation is
recomputed under the current policy; a call with `pack=True` measures again when the
stored report has no `pack`. `profile_fleet` runs many models with bounded
parallelism and progress lines. See docs/profiler.md.
"""

from fleet.sizing import Recommendation, recommend
from profiler.cache import ProfileCache
from profiler.gate import ProfileGateError
from profiler.load import LoadPlan
from profiler.parallel import Outcome, profile_fleet
from profiler.report import PackStats, Report
from profiler.run import ProfileOptions, profile

__all__ = [
    "LoadPlan",
    "Outcome",
    "PackStats",
    "ProfileCache",
    "ProfileGateError",
    "ProfileOptions",
    "Recommendation",
    "Report",
    "profile",
    "profile_fleet",
    "recommend",
]
