"""The package's layers point down only:
problem/_args -> dispatch/backends -> api -> nn -> models -> interop -> bench/cli.

Checked two ways: the import statements of every module (module level and inside functions),
and a fresh interpreter importing fastconv.nn and fastconv.models with torch made unimportable."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import fastconv

ROOT = pathlib.Path(fastconv.__file__).parent

#: Each module's layer; a module may import only from its own layer or below.
LAYERS = [
    {"problem", "_args", "_cpu", "_device", "_env", "ops", "arrays", "timing", "threads"},
    {"dispatch", "backends", "_ckernels"},
    {"api", "grad", "__init__"},
    {"nn", "optim"},
    {"models", "graph"},
    {"interop", "onnx"},
    {"plan", "_plan_steps", "_plan_tune"},
    {"bench", "train", "cli", "__main__"},
]


def _layer(parts: tuple[str, ...]) -> int:
    head = parts[0] if parts else "__init__"
    for i, names in enumerate(LAYERS):
        if head in names:
            return i
    raise AssertionError(f"module fastconv.{'.'.join(parts)} is in no layer: add it to LAYERS")


def _module_parts(path: pathlib.Path) -> tuple[str, ...]:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts
    return parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts


def _imports(path: pathlib.Path):
    """The fastconv submodules (as part tuples) that ``path`` imports, anywhere in the file."""
    package = _module_parts(path)[:-1] if path.name != "__init__.py" else _module_parts(path)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = (*base, *(node.module.split(".") if node.module else ()))
                if not node.module:  # from . import x, y: submodules, or names of the package itself
                    for alias in node.names:
                        sub = (*target, alias.name)
                        is_module = ROOT.joinpath(*sub).with_suffix(".py").exists() or ROOT.joinpath(*sub).is_dir()
                        yield (sub if is_module else target), node.lineno
                    continue
            elif node.module and node.module.split(".")[0] == "fastconv":
                target = tuple(node.module.split(".")[1:])
            else:
                continue
            yield target, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "fastconv":
                    yield tuple(alias.name.split(".")[1:]), node.lineno


def test_imports_point_down_only():
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        own = _layer(_module_parts(path))
        for target, line in _imports(path):
            if target and _layer(target) > own:
                upward.append(f"{path.relative_to(ROOT)}:{line} imports fastconv.{'.'.join(target)}")
    assert not upward, "imports pointing up a layer:\n" + "\n".join(upward)


def test_nn_and_models_import_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import fastconv.nn, fastconv.models, numpy as np\n"
        "m = fastconv.models.resnet18(num_classes=3).eval()\n"
        "assert m(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 3)\n"
        "assert 'fastconv.interop' not in sys.modules and 'fastconv.bench' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
