"""The tree's layers: what each package may import, and what decides an image's hash.

Layers, lowest first (docs/architecture.md):
  1. `fleet.errors`, `fleet.schema`: shipped in both images, import nothing of the project;
  2. the image packages `fleet.serving` and `fleet.router`: import only layer 1 and
     themselves, so their files (`fleet.hashing.*_IMAGE_CODE`) are exactly the image's code;
  3. the core (`fleet.naming`, `spec`, `specfile`, `resolved`, `routes`, `hashing`,
     `sizing`, `packing`): pure;
  4. the host layer `fleet.host`: every side effect;
  5. `fleet.commands`/`fleet.cli`, `profiler`, `components`, `__main__.py`.
A module imports only from its own layer or below, and there are no import cycles.
"""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest

from fleet.hashing import MODEL_IMAGE_CODE, ROUTER_IMAGE_CODE, image_files
from fleet.host.images import BuildSettings, content_hash, router_hash
from fleet.resolved import ResolvedModel
from fleet.schema import Column
from fleet.specfile import parse_fleet

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("fleet", "profiler", "components")
IMAGE_SHARED = {"fleet", "fleet.errors", "fleet.schema"}
CORE = {"fleet.naming", "fleet.spec", "fleet.specfile", "fleet.resolved", "fleet.routes"}
CORE |= {"fleet.hashing", "fleet.sizing", "fleet.packing"}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts) or "__main__"


def project_imports(path: Path) -> set[str]:
    """Project modules `path` imports anywhere (top level or inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found.update(n for n in names if n.split(".")[0] in PACKAGES)
    return found


def graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    files.append(ROOT / "__main__.py")
    modules = {module_name(p): p for p in files if "__pycache__" not in p.parts}
    out: dict[str, set[str]] = {}
    for name, path in modules.items():
        # `from fleet.host import docker_cli` names a module; `from x import func` names x.
        out[name] = {m for m in project_imports(path) if m in modules} - {name}
    return out


def layer(module: str) -> int:
    if module in IMAGE_SHARED:
        return 1
    if module.startswith(("fleet.serving", "fleet.router")):
        return 2
    if module in CORE:
        return 3
    if module.startswith("fleet.host"):
        return 4
    return 5


def test_every_import_goes_down_or_stays_in_its_layer() -> None:
    wrong = [
        f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
        for m, deps in graph().items()
        for d in deps
        if layer(d) > layer(m)
    ]
    assert wrong == []


def test_the_profiler_and_the_components_use_the_host_layer_not_the_cli() -> None:
    for module, deps in graph().items():
        # (`python -m profiler`, profiler/__main__.py, is `fleet profile` under another name.)
        if module.startswith(("profiler", "components")) and module != "profiler.__main__":
            assert not {d for d in deps if d.startswith(("fleet.commands", "fleet.cli"))}, module
        if module.startswith("profiler"):
            assert not {d for d in deps if d.startswith("components")}, module


def test_image_packages_import_only_their_own_package_and_the_shared_modules() -> None:
    for package in ("fleet.serving", "fleet.router"):
        for module, deps in graph().items():
            if module.startswith(package):
                outside = {d for d in deps if not d.startswith(package)} - IMAGE_SHARED
                assert outside == set(), f"{module} imports {outside}"


def test_no_import_cycles() -> None:
    g = graph()
    cycles: list[list[str]] = []
    # Tarjan's strongly connected components; a component of more than one module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert cycles == []


def test_fleet_and_profiler_never_import_pulumi() -> None:
    for pkg in ("fleet", "profiler"):
        for path in (ROOT / pkg).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                    if isinstance(node, ast.ImportFrom) and node.module:
                        names.append(node.module)
                    assert not any(n.split(".")[0].startswith("pulumi") for n in names), path


# What only a process entry point of the host layer may do: set the environment, set
# MLflow's global URIs, reach into BentoML's internals.
FORBIDDEN = re.compile(
    r"os\.environ\s*\[[^\]]+\]\s*=|os\.environ\.(update|setdefault|pop|clear)\(|os\.putenv\("
    r"|mlflow\.set_(tracking|registry)_uri\(|bentoml\._internal|monkeypatch\.setenv\("
)
ENTRY_POINTS = {"fleet/host/worker.py"}


def test_no_process_wide_state_is_set_outside_the_host_entry_points() -> None:
    hits = []
    for pkg in (*PACKAGES, "tests", "benchmarks"):
        for path in (ROOT / pkg).rglob("*.py"):
            rel = str(path.relative_to(ROOT))
            if rel in ENTRY_POINTS or path == Path(__file__):
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if FORBIDDEN.search(code) and not code.lstrip().startswith(("'", '"', "`")):
                    hits.append(f"{rel}:{n}: {line.strip()}")
    assert hits == []


FLEET = """
- name: match_probability_1_TAXI_trafficaware
  version: 3
  endpoint: probability
  parameters: [1, TAXI, trafficaware]
- name: demand_forecast_1
  version: 1
  endpoint: demand
  parameters: [1]
"""


def models() -> list[ResolvedModel]:
    inputs = [Column("route_decision_score", "double"), Column("holiday", "boolean")]
    return [
        ResolvedModel(
            model=m,
            version=3,
            model_uri=f"models:/{m.name}/3",
            run_id="0123456789abcdef0123456789abcdef",
            source="file:///artifacts/model",
            inputs=inputs,
        )
        for m in parse_fleet(FLEET).resolved_models()
    ]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the project's code, lock and config, to edit."""
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def hashes(project: Path) -> tuple[list[str], str]:
    settings = BuildSettings(project_root=project)
    return [content_hash(r, settings) for r in models()], router_hash(settings)


HOST_SIDE = [
    "fleet/host/images.py",
    "fleet/host/processes.py",
    "fleet/host/demo_registry.py",
    "fleet/cli.py",
    "fleet/commands/serve.py",
    "fleet/spec.py",
    "fleet/routes.py",
    "profiler/run.py",
    "components/model_service.py",
]


@pytest.mark.parametrize("rel", HOST_SIDE)
def test_a_host_side_edit_changes_no_image_hash(project: Path, rel: str) -> None:
    before = hashes(project)
    with (project / rel).open("a") as f:
        f.write("\n# an edit\n")
    assert hashes(project) == before


def test_a_model_image_code_edit_changes_every_model_hash_and_not_the_router(
    project: Path,
) -> None:
    (before, router) = hashes(project)
    with (project / "fleet/serving/service.py").open("a") as f:
        f.write("\n# an edit\n")
    after, router_after = hashes(project)
    assert all(a != b for a, b in zip(after, before, strict=True))
    assert router_after == router


def test_a_router_code_edit_changes_the_router_hash_only(project: Path) -> None:
    (before, router) = hashes(project)
    with (project / "fleet/router/proxy.py").open("a") as f:
        f.write("\n# an edit\n")
    after, router_after = hashes(project)
    assert after == before
    assert router_after != router


def test_a_shared_module_edit_changes_both_images(project: Path) -> None:
    (before, router) = hashes(project)
    with (project / "fleet/schema.py").open("a") as f:
        f.write("\n# an edit\n")
    after, router_after = hashes(project)
    assert all(a != b for a, b in zip(after, before, strict=True))
    assert router_after != router


def test_the_image_code_sets_are_what_the_packages_hold() -> None:
    model = {str(p) for p in image_files(ROOT, MODEL_IMAGE_CODE)}
    router = {str(p) for p in image_files(ROOT, ROUTER_IMAGE_CODE)}
    assert {str(p.relative_to(ROOT)) for p in (ROOT / "fleet/serving").glob("*.py")} <= model
    assert {str(p.relative_to(ROOT)) for p in (ROOT / "fleet/router").glob("*.py")} <= router
    assert not any(p.startswith(("fleet/host", "fleet/commands")) for p in model | router)
