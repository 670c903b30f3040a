"""The structure the README draws is the one the imports draw: wings import only downward,
and no module imports itself back through others (a walk of ``src/modfactory`` with ast)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "modfactory"

# The bottom: the settings (and the grammar of one of them), value types, the backends'
# names (plugins), the artifact store, Redis connections (the URL's grammar, the one factory
# of clients), atomic files and JSON documents in Redis, logging, charts (drawn for the data
# set, the training curve and the evaluation alike), the table of roles.
BASE = {"settings", "crontab", "values", "plugins", "artifacts", "fileio", "redis_json"}
BASE |= {"redaction", "logs", "charts", "config", "artifact_keys", "redis_connections"}
BASE |= {"redis_replication", "roles"}
# Each wing, and the wings it may import besides itself and BASE.
MAY_IMPORT: dict[str, set[str]] = {
    "store": set(),
    "data": set(),
    "backends": {"data"},  # the local backend reads the data wing's JSONL files
    "evaluation": {"backends", "data", "store"},
    "serving": {"backends", "data", "evaluation", "store"},
    "stages": {"backends", "data", "evaluation", "store"},
    "scoring": {"serving", "backends", "data", "evaluation", "store"},
    "producer": {"stages", "backends", "data", "evaluation", "store"},
    "worker": {"stages", "scoring", "serving", "backends", "data", "evaluation", "store"},
    "triggers": {"producer", "stages", "backends", "data", "evaluation", "store"},
    "web": {
        "triggers",
        "producer",
        "scoring",
        "serving",
        "stages",
        "backends",
        "data",
        "evaluation",
        "store",
    },
    "cli": {
        "web",
        "triggers",
        "worker",
        "producer",
        "scoring",
        "serving",
        "stages",
        "backends",
        "data",
        "evaluation",
        "store",
    },
    "__main__": {"cli"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The modfactory modules ``path`` imports (lazily inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "modfactory":
                found |= {a.name for a in node.names}
            elif node.module.startswith("modfactory."):
                module = node.module.removeprefix("modfactory.")
                found.add(module)
                found |= {f"{module}.{a.name}" for a in node.names}  # a sub-module, perhaps
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("modfactory.") for a in node.names}
    return found


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}
GRAPH = {
    name: {dep for dep in imports_of(path) if dep in MODULES and dep != name}
    for name, path in MODULES.items()
}


def wing(module: str) -> str:
    return module.split(".")[0]


def test_every_module_belongs_to_a_wing_with_a_docstring_saying_what_it_owns() -> None:
    for name, path in MODULES.items():
        if name == "":
            continue
        assert wing(name) in BASE | set(MAY_IMPORT), f"{name} is in no wing"
        assert ast.get_docstring(ast.parse(path.read_text())), f"{name} has no docstring"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m))
def test_imports_point_only_down(module: str) -> None:
    here = wing(module)
    allowed = BASE | {here} | MAY_IMPORT.get(here, set())
    upward = sorted(dep for dep in GRAPH[module] if wing(dep) not in allowed)
    assert upward == [], f"{module} imports {upward}: {here} may import only {sorted(allowed)}"


def test_the_import_graph_has_no_cycle() -> None:
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            pytest.fail("import cycle: " + " -> ".join([*path[path.index(module) :], module]))
        if module in done:
            return
        for dep in sorted(GRAPH[module]):
            visit(dep, [*path, module])
        done.add(module)

    for module in sorted(GRAPH):
        visit(module, [])


def test_the_rules_can_fail() -> None:
    """The walk sees imports: the CLI's (the top) and the store's (none upward)."""
    assert "producer" in GRAPH["cli.runs"] and "values" in GRAPH["store.runs"]
    assert not any(wing(dep) == "backends" for dep in GRAPH["store.runs"])


MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 62


def test_modules_and_functions_stay_small_enough_to_read() -> None:
    """The sizes the README promises: no module over 400 lines, no function over 62."""
    too_long = []
    for name, path in MODULES.items():
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"module {name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}.{node.name}: {length} lines")
    assert not too_long, too_long


# What the CLI may not load before a command needs it (`modfactory --help` answers at once).
HEAVY = ("scipy", "sklearn", "matplotlib", "datasets", "pyarrow", "pandas", "numpy", "uvicorn")
HEAVY += ("mistralai", "starlette", "arq", "redis", "huggingface_hub", "prometheus_client")


def test_the_cli_starts_without_loading_a_heavy_library() -> None:
    import json
    import os
    import subprocess
    import sys

    probe = "import json, sys, modfactory.cli; print(json.dumps(sorted(sys.modules)))"
    loaded = json.loads(
        subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True
        ).stdout
    )
    heavy = sorted({m.split(".")[0] for m in loaded} & set(HEAVY))
    assert heavy == [], f"imported at CLI start-up: {heavy}"
    assert "modfactory.cli.classify" in loaded  # the probe did load the commands
    assert "pydantic" not in loaded  # `dataset`'s options (the recipe's fields) wait
    build = subprocess.run(
        [sys.executable, "-m", "modfactory", "dataset", "build", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "200"},
    ).stdout
    assert "--n-train" in build and "Rows taken from the shuffled train split" in build


def test_no_module_outside_the_backends_names_a_backend() -> None:
    """What differs by backend is the backend's to say: only the backends and the settings'
    default name one (the built-ins are declared in ``pyproject.toml``, as a plugin's are)."""
    allowed = {"settings"}
    for name, path in MODULES.items():
        if wing(name) == "backends" or name in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in ("local", "mistral"):
                raise AssertionError(
                    f"{name} names the {node.value!r} backend (line {node.lineno})"
                )


# Where a module may touch this machine's files itself, and why: none of it is an artifact
# (a run's files and a backend's live in the artifact store, which alone reads and writes
# them). The data wing builds into a scratch directory it is given and caches sources; the
# CLI reads and writes the user's own files; the embedded Redis keeps its data.
LOCAL_FILES = {
    "artifacts": "the artifact store itself",
    "fileio": "atomic writes, for the store and the caches",
    "data.build": "builds into the scratch directory it is given",
    "data.feedback": "adds corrections to a build in scratch; reads `feedback import`'s file",
    "data.recipe": "writes and reads JSONL files in scratch and for `dataset build`",
    "data.sources": "sources are local directories; fingerprints are cached",
    "data.synthetic": "generated sources, cached",
    "data.shuffle_guard": "its verdict, cached",
    "data.texts": "the user's files that `classify` reads and writes",
    "data.exports": "writes a scoring job's parts where `score --output` names",
    "data.archive": "the user's files (or their URLs) that `score` reads; synthetic ones, cached",
    "store.embedded_redis": "the embedded Redis's own data",
    "cli.app": "the embedded Redis's directory",
    "cli.services": "the embedded Redis's directory",
    "producer": "the sources' fingerprints, cached",
    "backends.local.backend": "its trainers' logs, and /proc to find a trainer here",
    "backends.mistral.backend": "uploads a file it is given",
    "backends.mistral.batch": "writes a batch job's input in its own temporary directory",
    "cli.dataset": "`dataset build --out DIR`, the user's directory",
    "cli.classify": "the user's input and output files",
    "cli.feedback": "the user's file of corrections",
}
FILE_CALLS = {"read_text", "write_text", "read_bytes", "write_bytes", "mkdir", "unlink"}
FILE_CALLS |= {"rmtree", "iterdir", "glob", "rglob", "copyfile", "atomic_output", "filesystem"}


def file_calls(path: Path) -> list[str]:
    """What a module does with files itself: file-system calls (``open``, ``x.read_text``,
    ``fsspec``), and paths built with ``/`` from a literal (``data_dir / "runs"``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute):
                receiver = getattr(func.value, "id", "")
                if func.attr in FILE_CALLS or (func.attr == "open" and receiver != "webbrowser"):
                    found.append(f"{func.attr} (line {node.lineno})")
            elif getattr(func, "id", "") in FILE_CALLS | {"open"}:
                found.append(f"{func.id} (line {node.lineno})")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            if any(
                isinstance(s, ast.Constant) and isinstance(s.value, str)
                for s in (node.left, node.right)
            ):
                found.append(f"a path built with / (line {node.lineno})")
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names]
            if any(n.split(".")[0] == "fsspec" for n in names):
                found.append(f"imports fsspec (line {node.lineno})")
    return found


def test_only_the_artifact_store_touches_artifacts() -> None:
    """No module but ``artifacts`` builds an artifact's path or opens one: every other file
    access is a module's own scratch, cache or the user's file, listed with its reason."""
    offenders = {
        name: calls
        for name, path in MODULES.items()
        if name not in LOCAL_FILES and (calls := file_calls(path))
    }
    assert offenders == {}, f"file access outside the artifact store: {offenders}"
    assert file_calls(MODULES["artifacts"]), "the walk sees the store's own calls"
    for name in LOCAL_FILES:
        assert name in MODULES, f"{name} is listed but no longer exists"
