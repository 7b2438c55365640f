"""The code's shape: no module over 400 lines and no function over 80 in the package, the experiments and the
benchmarks (files read with ast, nothing imported), except today's offenders, listed with their current size so that
the lists only shrink; and configuration that loads without torch."""

from __future__ import annotations

import ast
import subprocess
import sys

from .conftest import ROOT

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
CHECKED = ("embinject", "experiments", "benchmarks")

# path -> its lines today. A file here may not grow; once within the limit, remove it.
LONG_MODULES: dict[str, int] = {}
# path:qualified name -> its lines today (from `def` to its last line). The same rules.
LONG_FUNCTIONS: dict[str, int] = {}


def _functions(tree: ast.AST, prefix: str = ""):
    """(qualified name, lines) of every function, nested ones and methods included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node.end_lineno - node.lineno + 1
            yield from _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")
        else:
            yield from _functions(node, prefix)


def _sizes() -> tuple[dict[str, int], dict[str, int]]:
    modules, functions = {}, {}
    for top in CHECKED:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            text = path.read_text(encoding="utf-8")
            modules[rel] = len(text.splitlines())
            for name, lines in _functions(ast.parse(text, rel)):
                functions[f"{rel}:{name}"] = max(lines, functions.get(f"{rel}:{name}", 0))
    return modules, functions


def _problems(sizes: dict[str, int], allowed: dict[str, int], limit: int, what: str, listing: str) -> list[str]:
    out = []
    for key, size in sizes.items():
        if key in allowed:
            if size <= limit:
                out.append(f"{key}: {size} lines, within the {limit} now: remove it from {listing}")
            elif size > allowed[key]:
                out.append(f"{key}: {size} lines, grown from the {allowed[key]} in {listing}: split it, don't grow it")
        elif size > limit:
            out.append(f"{key}: {size} lines, over the {limit} for a {what}: split it")
    out += [f"{key}: listed in {listing} but gone: remove it" for key in allowed if key not in sizes]
    return out


def test_no_module_is_over_400_lines_and_no_function_over_80():
    modules, functions = _sizes()
    problems = _problems(modules, LONG_MODULES, MAX_MODULE_LINES, "module", "LONG_MODULES")
    problems += _problems(functions, LONG_FUNCTIONS, MAX_FUNCTION_LINES, "function", "LONG_FUNCTIONS")
    assert not problems, "\n".join(problems)


def test_configuration_loads_without_torch():
    """A config, a search file and its space are read (and bad input answered) before torch, which takes seconds."""
    probe = (
        "import sys; import embinject.config, embinject.config_files, embinject.space; "
        "print(sorted(m for m in ('torch', 'safetensors', 'transformers', 'ray', 'mlflow') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr[-2000:]


def test_a_packed_trials_process_loads_without_torch():
    """A packed search starts one process per trial at once, which only relays what its pack host reports."""
    probe = (
        "import sys; import embinject.tune.worker.member; "
        "print(sorted(m for m in ('torch', 'safetensors', 'transformers', 'mlflow') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr[-2000:]
