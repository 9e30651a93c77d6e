"""Dependencies point one way: web -> services -> store, models and clients; no import cycles.

The graph is read from the source (the AST of every module under portal/), counting every import:
one inside a function ("lazy") is still a dependency, and `from portal import x` depends on
portal.x. A package depends on what its `__init__` imports; a module importing its own package
does not count (Python has run that `__init__` already).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "portal"

# The bottom layer: storage, models and clients. They import only each other.
LOWER = (
    "portal.admin.audit",  # the audit log's table, written by the console and the branding
    "portal.api.errors",
    "portal.branding.cache",
    "portal.branding.markup",
    "portal.config",
    "portal.db",
    "portal.error_texts",
    "portal.http",
    "portal.i18n",
    "portal.jobs",
    "portal.jsonlimits",
    "portal.models",
    "portal.money",
    "portal.observability",
    "portal.orders",
    "portal.outbound",
    "portal.receipts",
    "portal.recurring",
    "portal.stripe_gateway",
    "portal.urls",
)
# The top: what serves requests and commands, and the wiring that builds the app. Everything
# else is a service (checkout, fulfilment, refunds, disputes, mail, alerts, branding, ...).
WEB = (
    "portal",  # create_app
    "portal.admin",
    "portal.api",
    "portal.api.cli",
    "portal.api.routes",
    "portal.api.schema",
    "portal.cli",
    "portal.errors",
    "portal.job_kinds",  # the wiring: every job kind
    "portal.ratelimit",
    "portal.sandbox",
    "portal.services",  # the wiring: the services an app holds
    "portal.views",
    "portal.webhooks",
)
# Services of the admin console that the console's pages call (the rest of admin/ is web).
ADMIN_SERVICES = (
    "portal.admin.auth",
    "portal.admin.figures",
    "portal.admin.operations",
    "portal.admin.queries",
)
# Known exceptions to "a service imports no web module", each with its reason (a name covers
# the modules under it). The platform modules still hold their own routes beside their
# services; a platform package's `routes` module is web.
ALLOWED = {
    ("portal.mail", "portal.sandbox"): "sandbox mode catches mail in the stand-in's store",
    ("portal.platforms.cleeng", "portal.views"): "its review page shares the order pages",
    ("portal.platforms.cleeng", "portal.webhooks"): "Stripe's webhook hands it its events",
    ("portal.platforms.openlearning", "portal.views"): "its entry page shares the order pages",
    ("portal.platforms.openlearning", "portal.errors"): "its entry page's error pages",
    ("portal.platforms.skilljar", "portal.views"): "its entry page shares the order pages",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(tree: ast.AST, name: str, is_package: bool, known: set[str]) -> set[str]:
    """The portal modules `tree` imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # `from portal import x` imports the module portal.x when there is one.
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    modules = set()
    for module in found:
        while module and module not in known:
            module = module.rpartition(".")[0]
        if module and module != name and not name.startswith(module + "."):
            modules.add(module)
    return modules


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    known = set(paths)
    return {
        name: imported(ast.parse(path.read_text()), name, path.name == "__init__.py", known)
        for name, path in paths.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, without recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for target in edges:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def describe(graph: dict[str, set[str]], component: list[str]) -> str:
    members = set(component)
    lines = [f"import cycle of {len(component)} modules:"]
    for name in component:
        lines.append(f"  {name} -> {', '.join(sorted(graph[name] & members))}")
    return "\n".join(lines)


def within(name: str, prefixes) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def layer(name: str) -> str:
    if within(name, LOWER):
        return "lower"
    if within(name, ADMIN_SERVICES):
        return "service"
    if name in WEB or within(name, ("portal.admin", "portal.sandbox")):
        return "web"
    # A platform's routes are web; its spec is wiring (it names the routes, the stand-in, the
    # platform class and the jobs for the registry), like create_app.
    if name.startswith("portal.platforms.") and name.rpartition(".")[2] in ("routes", "spec"):
        return "web"
    return "service"


def test_the_graph_sees_lazy_imports_and_from_package_imports():
    graph = import_graph()
    assert "portal.job_kinds" in graph["portal.services"]
    # `from portal.observability.metrics import ...` inside a function of admin/metrics.py or
    # at the top: either way it is an edge.
    assert "portal.observability.metrics" in graph["portal.admin.metrics"]
    tree = ast.parse("def f():\n    from portal import mail\n")
    assert imported(tree, "portal.x", False, {"portal", "portal.mail"}) == {"portal.mail"}


def test_every_module_is_in_one_layer_and_the_lists_name_real_modules():
    graph = import_graph()
    for prefix in (*LOWER, *WEB, *ADMIN_SERVICES):
        assert any(within(name, (prefix,)) for name in graph), f"{prefix} is not a module"
    assert {layer(name) for name in graph} == {"lower", "service", "web"}


def test_dependencies_point_one_way():
    """Store, models and clients import nothing above them; services import no web module
    (views, console pages, API routes, the wiring), except the few listed in ALLOWED."""
    graph = import_graph()
    wrong = []
    for name, targets in sorted(graph.items()):
        for target in sorted(targets):
            if layer(name) == "lower" and layer(target) != "lower":
                wrong.append(f"{name} (store/clients) imports {target} ({layer(target)})")
            elif (
                layer(name) == "service"
                and layer(target) == "web"
                and not any(
                    within(name, (allowed,)) and within(target, (web,)) for allowed, web in ALLOWED
                )
            ):
                wrong.append(f"{name} (service) imports {target} (web)")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_no_import_cycles():
    graph = import_graph()
    found = cycles(graph)
    assert not found, "\n".join(describe(graph, component) for component in found)


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
