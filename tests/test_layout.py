"""The house rules, read from the source: no import cycle, components never import a recipe or
OmegaConf (the config package aside), torchtune's private API through one module only, and the
training loop reads the plan, never the config."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "adept_components"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_imports(path: Path) -> set[str]:
    """Modules imported at module level (imports inside functions are lazy: no cycle)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def all_imports(path: Path) -> set[str]:
    """Every module named by any import statement of the file, lazy ones included."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


FILES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_no_import_cycle_among_the_components() -> None:
    graph = {
        name: {dep for dep in module_imports(path) if dep in FILES and dep != name}
        for name, path in FILES.items()
    }
    state: dict[str, int] = {}

    def visit(name: str, stack: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            assert state.get(dep) != 1, "import cycle: " + " -> ".join([*stack, name, dep])
            if dep not in state:
                visit(dep, [*stack, name])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert len(graph) > 40  # the walk saw the package


def test_components_import_no_recipe_and_only_config_imports_omegaconf() -> None:
    for name, path in FILES.items():
        imports = all_imports(path)
        assert not imports & {"adept_cpt", "adept_eval"}, name
        if not name.startswith("adept_components.config"):
            assert not any(i.split(".")[0] == "omegaconf" for i in imports), name


def test_torchtune_private_names_come_through_one_module() -> None:
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "recipes").glob("*.py")]:
        if path.name == "_torchtune.py":
            continue
        for name in all_imports(path):
            if name.startswith("torchtune"):
                assert not any(part.startswith("_") for part in name.split(".")), (path, name)


def test_the_training_loop_reads_the_plan_not_the_config() -> None:
    tree = ast.parse((ROOT / "recipes" / "adept_cpt.py").read_text())
    recipe = next(
        n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "AdeptCPTRecipe"
    )
    loop = [n for n in recipe.body if isinstance(n, ast.FunctionDef) and n.name in ("train", "train_step")]  # fmt: skip
    assert len(loop) == 2
    for function in loop:
        for node in ast.walk(function):
            assert not (isinstance(node, ast.Name) and node.id == "cfg"), function.name
            assert not (isinstance(node, ast.Attribute) and node.attr == "config"), function.name
