"""Packing: which shared model server ("pack") each packed model runs in, by measurement.

A pack is one model-server process serving many models (`fleet.serving` pack mode). What
a model costs there is measured by the profiler (`profiler.report.PackStats`): its
*baseline*, the server with the libraries the model needs, and its *marginal*, what one
more such model adds. A pack of models then measures

    p95  = max(baseline_p95)  + sum(max(marginal_p95,  packing.min_marginal_mib))
    peak = max(baseline_peak) + sum(max(marginal_peak, packing.min_marginal_mib))

and its memory request and limit follow from those under the fleet's memory policy
(`fleet.sizing.recommend`, as for a model alone). A pack fits when that limit is
within `packing.memory_budget_mib` and it holds at most `packing.max_models` models.

Placement is stable: `place` starts from the previous placement (the placement file that
`fleet place` writes and the repository keeps), keeps every model where it was, takes
removed models out, and moves a model only when its pack no longer fits (the largest
first, as few as it takes). New and moved models go first-fit decreasing into the packs
in name order, then into new packs. The same placement file and fleet always give the
same placement, so a `pulumi preview` on any runner shows the same packs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from fleet.errors import FleetError, SpecError
from fleet.resolved import ResolvedModel
from fleet.sizing import recommend
from fleet.spec import Fleet, MemoryPolicy, Packing

PACK_PREFIX = "pack-"
"""Packs are named `pack-0`, `pack-1`, ... (their Deployment, Service and pods too)."""
UNMEASURED_BASELINE_MIB = 256.0
"""Baseline assumed for a model the placement file has no measurement of, when it has
none of any model either."""
UNMEASURED_MARGINAL_MIB = 32.0
"""Marginal assumed likewise; `fleet place` replaces both by what it measures."""
HEADER = """\
# Written by `fleet place`: the pack each packed model of models.yaml runs in, and what it
# measured there (MiB; baseline = the server with the model's libraries, marginal = what
# the model adds). Commit it: `pulumi preview`, `pulumi up` and `fleet serve` keep models
# in these packs and place new ones by these numbers. Do not edit by hand.
"""


class PlacementError(FleetError):
    """Models cannot be placed (one alone is over the budget), or the placement file is bad."""


@dataclass(frozen=True)
class PackSize:
    """What one model costs in a pack, in MiB (`profiler.report.PackStats`)."""

    baseline_p95_mib: float
    baseline_peak_mib: float
    marginal_p95_mib: float
    marginal_peak_mib: float
    content_hash: str = ""
    """The model image the numbers were measured on; "" for an estimate."""

    @property
    def measured(self) -> bool:
        return bool(self.content_hash)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v != ""}

    @staticmethod
    def from_dict(data: Mapping[str, Any], where: str) -> PackSize:
        known = [f.name for f in fields(PackSize)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise PlacementError(f"{where}: unknown key '{unknown[0]}'")
        try:
            numbers = {k: float(data[k]) for k in known if k != "content_hash"}
        except KeyError as exc:
            raise PlacementError(f"{where}: missing '{exc.args[0]}'") from exc
        except (TypeError, ValueError) as exc:
            raise PlacementError(f"{where}: not a number: {exc}") from exc
        bad = sorted(k for k, v in numbers.items() if not math.isfinite(v) or v < 0)
        if bad:
            raise PlacementError(f"{where}: {bad[0]} must be a number of MiB, at least 0")
        return PackSize(**numbers, content_hash=str(data.get("content_hash") or ""))


@dataclass(frozen=True)
class PackMemory:
    """A pack's measured memory and the request and limit it gets (MiB)."""

    p95_mib: float
    peak_mib: float
    request_mib: int
    limit_mib: int


def pack_memory(
    sizes: Iterable[PackSize], policy: MemoryPolicy, min_marginal_mib: float = 0.0
) -> PackMemory:
    """The memory of a pack of models of `sizes` under `policy` (see the module docs),
    each marginal taken as at least `min_marginal_mib` (`packing.min_marginal_mib`)."""
    sizes = list(sizes)
    if not sizes:
        raise ValueError("a pack holds at least one model")
    floor = min_marginal_mib
    p95 = max(s.baseline_p95_mib for s in sizes)
    p95 += sum(max(s.marginal_p95_mib, floor) for s in sizes)
    peak = max(s.baseline_peak_mib for s in sizes)
    peak += sum(max(s.marginal_peak_mib, floor) for s in sizes)
    peak = max(peak, p95)
    rec = recommend(p95, peak, policy.model_copy(update={"fixed_mib": None}))
    return PackMemory(round(p95, 1), round(peak, 1), rec.request_mib, rec.limit_mib)


@dataclass(frozen=True)
class Placement:
    """Pack name -> the names of its models (sorted); packs sorted by number."""

    packs: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def pack_of(self) -> dict[str, str]:
        """Model name -> its pack."""
        return {m: pack for pack, models in self.packs.items() for m in models}

    def moved(self, before: Placement) -> dict[str, tuple[str | None, str | None]]:
        """Models whose pack differs from `before`: name -> (old pack, new pack)."""
        old, new = before.pack_of(), self.pack_of()
        return {
            m: (old.get(m), new.get(m))
            for m in sorted(set(old) | set(new))
            if old.get(m) != new.get(m)
        }


@dataclass(frozen=True)
class PlacementFile:
    """What `fleet place` writes: the placement and each placed model's size."""

    placement: Placement = field(default_factory=Placement)
    sizes: dict[str, PackSize] = field(default_factory=dict)


def pack_number(name: str) -> int:
    return int(name.removeprefix(PACK_PREFIX))


def place(
    sizes: Mapping[str, PackSize],
    previous: Placement,
    packing: Packing,
    policy: MemoryPolicy,
    taken_names: Iterable[str] = (),
) -> Placement:
    """Place every model of `sizes` into packs, starting from `previous` (module docs).

    `taken_names` are Kubernetes names a pack may not get (the dedicated models'); raises
    PlacementError naming a model that fits in no pack even alone.
    """

    def fits(models: list[str]) -> bool:
        if len(models) > packing.max_models:
            return False
        return (
            pack_memory([sizes[m] for m in models], policy, packing.min_marginal_mib).limit_mib
            <= packing.memory_budget_mib
        )

    for name in sorted(sizes):
        if not fits([name]):
            alone = pack_memory([sizes[name]], policy, packing.min_marginal_mib).limit_mib
            raise PlacementError(
                f"model '{name}': measured alone in a pack its limit is {alone} MiB, over "
                f"packing.memory_budget_mib ({packing.memory_budget_mib}); raise the budget "
                "or give the model 'dedicated: true'"
            )

    def biggest_first(name: str) -> tuple[float, float, str]:
        s = sizes[name]
        return (-s.marginal_peak_mib, -s.baseline_peak_mib, name)

    packs: dict[str, list[str]] = {}
    homeless: list[str] = []
    for pack in sorted(previous.packs, key=pack_number):
        members = sorted(m for m in previous.packs[pack] if m in sizes)
        while members and not fits(members):
            # Fewest moves: the biggest leaves first.
            out = min(members, key=biggest_first)
            members.remove(out)
            homeless.append(out)
        if members:
            packs[pack] = members
    placed = {m for members in packs.values() for m in members}
    homeless += [m for m in sizes if m not in placed and m not in homeless]
    taken = set(taken_names)
    for name in sorted(homeless, key=biggest_first):
        home = next((p for p in packs if fits([*packs[p], name])), None)
        if home is None:
            home = _free_name(packs, taken)
            packs[home] = []
            packs = dict(sorted(packs.items(), key=lambda kv: pack_number(kv[0])))
        packs[home].append(name)
    return Placement({p: tuple(sorted(ms)) for p, ms in packs.items()})


def _free_name(packs: Mapping[str, Any], taken: set[str]) -> str:
    i = 0
    while f"{PACK_PREFIX}{i}" in packs or f"{PACK_PREFIX}{i}" in taken:
        i += 1
    return f"{PACK_PREFIX}{i}"


def sizes_for(names: Iterable[str], known: Mapping[str, PackSize]) -> dict[str, PackSize]:
    """The size of each model of `names`: its measurement in `known`, else an estimate
    (the largest baseline and marginal measured so far, else the UNMEASURED_* numbers)."""
    measured = list(known.values())
    estimate = PackSize(
        baseline_p95_mib=max(
            (s.baseline_p95_mib for s in measured), default=UNMEASURED_BASELINE_MIB
        ),
        baseline_peak_mib=max(
            (s.baseline_peak_mib for s in measured), default=UNMEASURED_BASELINE_MIB
        ),
        marginal_p95_mib=max(
            (s.marginal_p95_mib for s in measured), default=UNMEASURED_MARGINAL_MIB
        ),
        marginal_peak_mib=max(
            (s.marginal_peak_mib for s in measured), default=UNMEASURED_MARGINAL_MIB
        ),
    )
    return {n: known.get(n, estimate) for n in names}


def read_placement(path: str | Path) -> PlacementFile:
    """The placement file at `path`; an empty one when there is no such file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return PlacementFile()
    except OSError as exc:
        raise PlacementError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise PlacementError(f"{path}: not valid YAML: {exc}") from exc
    packs_raw = data.get("packs") if isinstance(data, dict) else None
    if not isinstance(packs_raw, dict):
        raise PlacementError(f"{path}: expected a mapping 'packs: {{pack-0: {{model: sizes}}}}'")
    packs: dict[str, tuple[str, ...]] = {}
    sizes: dict[str, PackSize] = {}
    for pack, models in packs_raw.items():
        pack = str(pack)
        if not pack.startswith(PACK_PREFIX) or not pack.removeprefix(PACK_PREFIX).isdigit():
            raise PlacementError(f"{path}: packs.{pack}: a pack is named {PACK_PREFIX}<number>")
        if not isinstance(models, dict) or not models:
            raise PlacementError(f"{path}: packs.{pack}: expected a mapping of models to sizes")
        for model, size in models.items():
            model = str(model)
            if model in sizes:
                raise PlacementError(f"{path}: model '{model}' is in two packs")
            if not isinstance(size, dict):
                raise PlacementError(f"{path}: packs.{pack}.{model}: expected a mapping")
            sizes[model] = PackSize.from_dict(size, f"{path}: packs.{pack}.{model}")
        packs[pack] = tuple(sorted(str(m) for m in models))
    return PlacementFile(
        Placement(dict(sorted(packs.items(), key=lambda kv: pack_number(kv[0])))), sizes
    )


def write_placement(path: str | Path, placed: PlacementFile) -> None:
    """Write the placement file (sorted, so the same placement gives the same bytes)."""
    missing = sorted(set(placed.placement.pack_of()) - set(placed.sizes))
    if missing:
        raise ValueError(f"no size for model '{missing[0]}'")
    body = {
        "packs": {
            pack: {m: placed.sizes[m].to_dict() for m in models}
            for pack, models in placed.placement.packs.items()
        }
    }
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(HEADER + yaml.safe_dump(body, sort_keys=False, width=100))
    tmp.replace(path)


def place_fleet(
    fleet: Fleet, models: Iterable[ResolvedModel], placed: PlacementFile
) -> tuple[Placement, list[str]]:
    """The packs of the fleet's packed models (`place`, from the placement file `placed`,
    dedicated models' names taken), and the packed models placed by an estimate because
    `placed` has no measurement of them. The Pulumi program and `fleet serve` both call
    this: they place alike."""
    models = list(models)
    packed = [r.name for r in models if r.model.packed]
    if not packed:
        return Placement(), []
    dedicated = [r.model.k8s_name for r in models if not r.model.packed]
    sizes = sizes_for(packed, placed.sizes)
    placement = place(sizes, placed.placement, fleet.packing, fleet.defaults.memory, dedicated)
    check_names(placement, dedicated)
    return placement, sorted(n for n in packed if not sizes[n].measured)


def placement_path(models_file: str | Path, packing: Packing) -> Path:
    """The placement file of `models_file` (`packing.placement_file`, beside it)."""
    return Path(models_file).parent / packing.placement_file


def check_names(placement: Placement, dedicated: Iterable[str]) -> None:
    """Raise SpecError when a pack's name is a dedicated model's Kubernetes name."""
    clash = sorted(set(placement.packs) & set(dedicated))
    if clash:
        raise SpecError([f"pack '{clash[0]}': a dedicated model has that Kubernetes name"])
