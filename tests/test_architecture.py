"""The package's shape: wings whose imports point only down, no import loop, imports inside functions only
in the doors (cli, api, the package's __init__), where they keep start-up fast."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "audiotokens"
# lowest first: a module may import from its own wing and the wings before it, never from a later one
WINGS = ("errors", "config", "pipeline", "data", "features", "tokens", "model", "training", "evaluation",
         "tuning", "api", "cli", "__init__")
DOORS = ("api", "cli", "__init__")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def wing(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(module: str) -> list[tuple[str, ast.stmt, bool]]:
    """(imported package module, statement, whether the statement sits at module level)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    module_level = {id(node) for node in tree.body}
    for node in tree.body:  # `if TYPE_CHECKING:` and `try:` blocks at module level are module level too
        if isinstance(node, (ast.If, ast.Try)):
            module_level |= {id(child) for child in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{alias.name}" for alias in node.names]
            targets = [name if name in MODULES else target for name in names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        for target in dict.fromkeys(targets):
            if target in MODULES and target != module:
                found.append((target, node, id(node) in module_level))
    return found


def graph() -> dict[str, set[str]]:
    return {module: {target for target, _, _ in imports_of(module)} for module in MODULES}


def test_every_module_belongs_to_a_wing():
    assert {wing(module) for module in MODULES} <= set(WINGS)


def test_imports_point_down_the_wings():
    upward = [f"{module} imports {target}"
              for module in MODULES for target, _, _ in imports_of(module)
              if WINGS.index(wing(target)) > WINGS.index(wing(module))]
    assert upward == []


def test_no_import_loop():
    edges = graph()
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    loops = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                loops.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module, [module])
    assert loops == []


def test_only_the_doors_import_package_modules_inside_functions():
    inside = [f"{module}:{node.lineno}" for module in MODULES if wing(module) not in DOORS
              for _, node, module_level in imports_of(module) if not module_level]
    assert inside == []


def test_the_checks_see_known_imports():
    """Known edges are found, module level and inside functions alike, so the checks above can fail."""
    assert "audiotokens.tokens.kmeans" in graph()["audiotokens.tokens.quantizers"]
    assert any(not module_level for _, _, module_level in imports_of("audiotokens.cli"))


# libraries that take from a tenth of a second to seconds to import: the doors load them when a command needs them
HEAVY = ("torch", "faiss", "librosa", "matplotlib", "scipy", "sklearn", "soundfile", "numba", "pandas")


@pytest.mark.parametrize("command", [None, ["--help"], ["status", "--workdir", "{workdir}"]])
def test_the_doors_start_without_heavy_libraries(tmp_path, command):
    """Importing the CLI, its help and `status` of a workdir load none of HEAVY (start-up under 0.3 s)."""
    run = "" if command is None else (
        "from audiotokens.cli import main\n"
        f"try:\n    main({json.dumps(command).replace('{workdir}', str(tmp_path))}, prog_name='audiotokens')\n"
        "except SystemExit as exc:\n    assert not exc.code, exc.code\n")
    script = f"import sys, json\nimport audiotokens.cli\n{run}print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                            cwd=PACKAGE.parent)
    loaded = set(json.loads(result.stdout.strip().splitlines()[-1]))
    assert sorted(name for name in HEAVY if name in loaded) == []


def test_test_file_names_are_unique_across_wings():
    """Test folders have no __init__.py, so pytest imports each file by its basename: two files of one name
    in two wings stop the whole collection."""
    names = [path.name for path in Path(__file__).resolve().parent.rglob("test_*.py")]
    assert sorted({name for name in names if names.count(name) > 1}) == []
