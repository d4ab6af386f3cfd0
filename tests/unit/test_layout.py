"""The layout rules, read from the source text (nothing is imported): no import cycle among the
product's modules, the stand-in imports nothing of the product and nothing of the product imports
it, endpoint names only in the stand-in and the ClearML client package, ML libraries only in the
core scripts, Prefect never in specs / standards / scripts."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRODUCT = ("automation", "clearml_standin", "flows", "deployments")
ML_LIBRARIES = ("llmcompressor", "lm_eval", "guidellm", "torch", "transformers", "compressed_tensors", "vllm")
WIRE = re.compile(r"""["'](tasks|events|models|queues|projects|workers|auth)\.[a-z_]+["']""")


def _modules() -> dict[str, Path]:
    out = {}
    for top in PRODUCT:
        for f in (REPO / top).rglob("*.py"):
            parts = list(f.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


MODULES = _modules()


def _imports(path: Path, module: str) -> Iterator[str]:
    """Every module name `path` imports (function-level imports included), resolved to absolute names."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            yield base
            yield from (f"{base}.{a.name}" for a in node.names)


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for target in _imports(path, module):
            while target and target not in MODULES:
                target = target.rsplit(".", 1)[0] if "." in target else ""
            # a package __init__ handing on its own submodules is no cycle
            if target and target != module and not (path.name == "__init__.py" and target.startswith(module + ".")):
                graph[module].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_among_the_products_modules() -> None:
    assert _cycles(_graph()) == []


def test_the_stand_in_and_the_product_import_nothing_of_each_other() -> None:
    graph = _graph()
    for module, targets in graph.items():
        if module.startswith("clearml_standin"):
            assert all(t.startswith("clearml_standin") for t in targets), (module, targets)
        else:
            assert not any(t.startswith("clearml_standin") for t in targets), (module, targets)


def test_endpoint_names_only_in_the_stand_in_and_the_client_package() -> None:
    holders = sorted({str(p.relative_to(REPO)) for m, p in MODULES.items()
                      if WIRE.search(p.read_text()) and not m.startswith(("clearml_standin", "automation.clearml"))})
    assert holders == []


def test_ml_libraries_only_in_the_core_scripts_and_prefect_never_there() -> None:
    for module, path in MODULES.items():
        roots = {t.split(".")[0] for t in _imports(path, module)}
        if not module.startswith("automation.scripts"):
            assert not roots & set(ML_LIBRARIES), (module, roots & set(ML_LIBRARIES))
        if module.startswith(("automation.specs", "automation.standards", "automation.scripts",
                              "automation.clearml", "automation.errors")):
            assert "prefect" not in roots, module


def test_the_graph_is_read() -> None:
    """The checks above see real edges (a broken reader would make them pass on nothing)."""
    graph = _graph()
    assert "automation.specs.base" in graph["automation.specs.registry"]
    assert "flows.bridge" in graph["flows.run"]


def test_every_module_of_the_product_imports() -> None:
    """A moved module leaves no stale import behind (mypy ignores missing modules by configuration)."""
    import importlib
    import pkgutil

    broken = []
    for top in (*PRODUCT, "testing"):
        package = importlib.import_module(top)
        for info in pkgutil.walk_packages(package.__path__, f"{top}."):
            if info.name.rsplit(".", 1)[-1] == "__main__":
                continue
            try:
                importlib.import_module(info.name)
            except Exception as exc:
                broken.append(f"{info.name}: {type(exc).__name__}: {exc}")
    assert broken == []


# -- what a core script needs in a fresh environment ----------------------------------------------
def _third_party_closure(start: str) -> dict[str, str]:
    """Top-level third-party modules imported anywhere in `start`'s import closure within the
    product (function-level imports included) -> one product module that imports it."""
    import sys

    seen: set[str] = set()
    found: dict[str, str] = {}
    todo = [start]
    while todo:
        module = todo.pop()
        if module in seen or module not in MODULES:
            continue
        seen.add(module)
        for target in _imports(MODULES[module], module):
            top = target.split(".")[0]
            if top in PRODUCT:
                parts = target.split(".")
                todo.extend(".".join(parts[:i]) for i in range(1, len(parts) + 1))
            elif top and top not in sys.stdlib_module_names and top != "__future__":
                found.setdefault(top, module)
    return found


def _distribution_closure(requirements: tuple[str, ...]) -> set[str]:
    """The installed distributions these requirements pull in (themselves and their dependencies)."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    out: set[str] = set()
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(Requirement(r).name, frozenset(Requirement(r).extras)) for r in requirements]
    while todo:
        raw_name, extras = todo.pop()
        name = canonicalize_name(raw_name)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        out.add(name)
        try:
            for raw in requires(name) or []:
                req = Requirement(raw)
                if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in (*extras, "")):
                    todo.append((req.name, frozenset(req.extras)))
        except PackageNotFoundError:
            continue
    return out


def test_a_core_scripts_imports_are_its_kinds_libraries_plus_the_core_runtime() -> None:
    """A task's requirements must cover its script's closure in a fresh venv; the runtime list holds
    nothing no script imports, and Prefect and the CLI stack stay out of the closure."""
    from importlib.metadata import packages_distributions

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    from automation.specs.registry import kinds
    from automation.specs.runtime_packages import CORE_RUNTIME

    providers = packages_distributions()
    used: set[str] = set()
    for kind, cls in kinds().items():
        closure = _third_party_closure(cls.script_module)
        assert not {"prefect", "typer", "rich", "uvicorn", "starlette"} & set(closure), (kind, closure)
        # a script may import what a choice of its spec adds (lazily, on that path only)
        covered = _distribution_closure((*CORE_RUNTIME, *cls.base_packages, *cls.choice_packages))
        for top, importer in closure.items():
            dists = {canonicalize_name(d) for d in providers.get(top, [top])}
            assert dists & covered, f"{kind}: {importer} imports {top} ({sorted(dists)}), which its task would lack"
            used |= dists
    runtime = {canonicalize_name(Requirement(r).name) for r in CORE_RUNTIME}
    assert runtime <= used, f"listed for every task but imported by no core script: {sorted(runtime - used)}"


def test_the_core_runtime_is_pinned_as_in_the_constraints() -> None:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    from automation.specs.runtime_packages import CORE_RUNTIME

    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name.strip())] = version.strip()
    for raw in CORE_RUNTIME:
        req = Requirement(raw)
        assert str(req.specifier) == f"=={pins[canonicalize_name(req.name)]}", raw
