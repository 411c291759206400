"""The layers of docs/architecture.md, read off the source: imports point down (or sideways within a layer), never
round in a circle, and sit at the top of a file unless a comment says why one waits inside a function."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Lowest first: each of jasper's folders is a layer, and a module may import only its own layer or those below.
LAYERS: list[tuple[str, str]] = [
    ("core", "jasper.core"),  # plain functions on tensors and files: losses, resim, metrics, tables, disk
    ("models", "jasper.models"),  # student, vision tower, teachers, encoders, model files
    ("storage", "jasper.storage"),  # student checkpoints, the teacher cache
    ("data", "jasper.data"),  # sources, augmentation, batching, DataModules
    ("training", "jasper.training"),  # assembly from config, the run, stages, callbacks, sweeps
    ("evaluation", "jasper.evaluation"),  # evaluate.py's suite and report.py's fidelity table
    ("export", "jasper.exporting"),  # a student as a sentence-transformers folder
    ("entry points", ""),  # train.py, evaluate.py, export.py, precompute.py, report.py, hydra_plugins/
]
ENTRY_POINTS = ("train", "evaluate", "export", "precompute", "report")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    """Index in LAYERS of the folder ``module`` lives in (``jasper.data.images`` -> data)."""
    if module in ENTRY_POINTS or module.split(".")[0] == "hydra_plugins":
        return len(LAYERS) - 1
    for index, (_, package) in enumerate(LAYERS[:-1]):
        if module == package or module.startswith(package + "."):
            return index
    raise AssertionError(f"{module} is in no layer: move it into one of {[p for _, p in LAYERS[:-1]]}")


def source_files() -> list[Path]:
    files = sorted((REPO / "jasper").rglob("*.py")) + sorted((REPO / "hydra_plugins").rglob("*.py"))
    return files + [REPO / f"{name}.py" for name in ENTRY_POINTS]


def jasper_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """``(line, module)`` of every import of a jasper module, wherever it sits (``from jasper.x import y`` names
    ``jasper.x``, or ``jasper.x.y`` when y is itself a module)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "jasper"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "jasper":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                as_file = REPO / Path(*sub.split("."))
                is_module = as_file.with_suffix(".py").is_file() or (as_file / "__init__.py").is_file()
                found.append((node.lineno, sub if is_module else node.module))
    return found


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in source_files():
        name = module_name(path)
        edges[name] = {m for _, m in jasper_imports(ast.parse(path.read_text()))} - {name}
    return edges


def test_imports_point_down_the_layers():
    """Every jasper import goes to the importer's own layer or one below it (docs/architecture.md)."""
    upward = []
    for path in source_files():
        name = module_name(path)
        for line, imported in jasper_imports(ast.parse(path.read_text())):
            if layer_of(imported) > layer_of(name):
                upward.append(
                    f"{path.relative_to(REPO)}:{line}: {name} ({LAYERS[layer_of(name)][0]}) imports {imported} "
                    f"({LAYERS[layer_of(imported)][0]})"
                )
    assert not upward, "imports that point up the layers:\n" + "\n".join(upward)


def test_no_import_cycles():
    """No module reaches itself through its imports (a package counts as importing its __init__'s imports)."""
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_imports_inside_functions_say_why():
    """An import inside a function is for a heavy optional dependency, and a comment says which: on its line, on
    another line of its block of imports, or on the line above the block."""
    silent = []
    for path in source_files():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for sub in ast.walk(node):
                if not isinstance(sub, ast.Import | ast.ImportFrom):
                    continue
                first = last = sub.lineno - 1
                while first > 0 and lines[first - 1].strip().startswith(("from ", "import ")):
                    first -= 1
                while last + 1 < len(lines) and lines[last + 1].strip().startswith(("from ", "import ")):
                    last += 1
                block = lines[first : last + 1]
                if not any("#" in line for line in block) and not lines[first - 1].strip().startswith("#"):
                    silent.append(f"{path.relative_to(REPO)}:{sub.lineno}: {lines[sub.lineno - 1].strip()}")
    assert not silent, "imports inside functions without a comment saying why:\n" + "\n".join(silent)


MAX_LINES = 360  # "a reader can hold one file in their head" (nanoGPT): split a module before it passes this


def layer_modules() -> dict[int, list[str]]:
    """Layer index -> the modules in it, as ``jasper/data/`` files relative to the repo."""
    found: dict[int, list[str]] = {}
    for path in source_files():
        if path == REPO / "jasper" / "__init__.py":
            continue
        found.setdefault(layer_of(module_name(path)), []).append(str(path.relative_to(REPO)))
    return found


def layer_diagram() -> str:
    """The layers and the imports between them, read off the source: a mermaid flowchart (GitHub draws it) with an
    arrow from each layer to every layer it imports from. docs/architecture.md holds it verbatim
    (``python tests/test_architecture.py`` prints it)."""
    edges = set()
    for name, imported in graph().items():
        if name == "jasper":
            continue
        for target in imported:
            if layer_of(target) != layer_of(name):
                edges.add((layer_of(name), layer_of(target)))
    modules = layer_modules()
    lines = ["```mermaid", "flowchart TD"]
    for index, (label, _) in enumerate(LAYERS):
        shown = " ".join(
            sorted(
                {
                    m if m.count("/") < 2 else m.split("/")[0] + "/" + m.split("/")[1] + "/"
                    for m in modules.get(index, [])
                }
            )
        )
        lines.append(f'    L{index}["{label}: {shown}"]')
    lines += [f"    L{a} --> L{b}" for a, b in sorted(edges, reverse=True)]
    lines.append("```")
    return "\n".join(lines)


def test_every_module_lives_in_a_layer_folder():
    """No flat modules beside the layers: a file's folder is its layer (jasper/exporting.py is the export layer)."""
    loose = [
        str(p.relative_to(REPO))
        for p in (REPO / "jasper").glob("*.py")
        if p.name not in ("__init__.py", "exporting.py")
    ]
    assert not loose, f"modules outside the layer folders: {loose}"
    for path in (REPO / "jasper").rglob("*.py"):
        if path != REPO / "jasper" / "__init__.py":
            layer_of(module_name(path))  # raises for a folder that is no layer


def test_modules_stay_small():
    long = {
        str(p.relative_to(REPO)): n
        for p in (REPO / "jasper").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them by concern): {long}"


def test_the_architecture_doc_shows_the_layers_as_the_code_has_them():
    doc = (REPO / "docs" / "architecture.md").read_text()
    assert layer_diagram() in doc, (
        "docs/architecture.md's layer diagram differs from the imports: replace it with the output of "
        "python tests/test_architecture.py"
    )


def test_entry_points_start_without_lightning():
    """Importing Lightning costs seconds on 2 cores (it imports all of torchmetrics): export.py and evaluate.py never
    import it, train.py not before its command line passes (docs/architecture.md). In a fresh interpreter, as a
    user's command starts."""
    code = (
        "import sys, train, evaluate, export; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'torchmetrics', 'pytorch_lightning'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]", f"imported at start: {result.stdout.strip()}"


if __name__ == "__main__":
    print(layer_diagram())
