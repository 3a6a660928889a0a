"""Packaging: the core imports without heavy libraries; the ComfyUI entry point imports nothing ComfyUI has not
already imported (torch yes; peft, transformers, open_clip, matplotlib no) and registers every node."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "peft", "transformers", "open_clip", "matplotlib")


def imported_modules(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT.parent,
    )
    return set(out.stdout.split())


def test_core_package_import_is_light():
    mods = imported_modules("import densegrpo_core")
    assert not [m for m in HEAVY if m in mods]


def test_comfyui_entry_point_import_is_light():
    code = (
        f"import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('densegrpo_pack', {str(ROOT / '__init__.py')!r},\n"
        f"    submodule_search_locations=[{str(ROOT)!r}])\n"
        f"pack = importlib.util.module_from_spec(spec); import sys; sys.modules['densegrpo_pack'] = pack\n"
        f"spec.loader.exec_module(pack)\n"
        f"assert isinstance(pack.NODE_CLASS_MAPPINGS, dict)"
    )
    mods = imported_modules(code)
    assert not [m for m in HEAVY if m != "torch" and m in mods]


def test_comfyui_entry_point_registers_nodes_with_display_names():
    code = (
        f"import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('densegrpo_pack', {str(ROOT / '__init__.py')!r},\n"
        f"    submodule_search_locations=[{str(ROOT)!r}])\n"
        f"pack = importlib.util.module_from_spec(spec); import sys; sys.modules['densegrpo_pack'] = pack\n"
        f"spec.loader.exec_module(pack)\n"
        f"ids = sorted(pack.NODE_CLASS_MAPPINGS)\n"
        f"assert ids and ids == sorted(pack.NODE_DISPLAY_NAME_MAPPINGS), ids\n"
        f"assert all(i.startswith('DenseGRPO_') for i in ids), ids\n"
        f"assert all(c.CATEGORY.startswith('DenseGRPO/') for c in pack.NODE_CLASS_MAPPINGS.values())\n"
        f"print('OK', len(ids))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT.parent)
    assert out.returncode == 0 and out.stdout.startswith("OK"), out.stderr


# ------------------------------------------------------------------------------------------ layering
def _modules(package: str) -> dict[str, Path]:
    """Dotted module name → file for every .py file of a package folder in the repository."""
    out = {}
    for path in (ROOT / package).rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, known: dict) -> set[str]:
    """The modules of `known` that module `name` imports anywhere in its file (top level or inside functions)."""
    import ast

    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            # `from . import sub` imports the submodule, not the package's own code (already initialised as
            # the parent of any submodule): the edge goes to the submodule; `from pkg import name` to pkg
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
            targets = subs if len(subs) == len(node.names) else [base, *subs]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def test_core_never_imports_comfyui():
    """The layering rule: the headless core never imports comfy, folder_paths or server."""
    import ast

    bad = []
    for name, path in _modules("densegrpo_core").items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            bad += [
                f"{name}: {n}" for n in names if n.split(".")[0] in ("comfy", "comfy_extras", "folder_paths", "server")
            ]
    assert not bad


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return cycles


def test_core_has_no_import_cycles():
    mods = _modules("densegrpo_core")
    assert not _cycles({name: _imports(name, path, mods) for name, path in mods.items()})


def test_nodes_have_no_import_cycles():
    mods = _modules("nodes")
    assert not _cycles({name: _imports(name, path, mods) for name, path in mods.items()})


# The core's subpackages from the bottom up: a module imports only its own subpackage and those below it.
LAYERS = ("util", "method", "models", "rewards", "resources", "training", "jobs", "app")


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_core_subpackages_only_import_their_own_layer_or_lower_ones():
    mods = _modules("densegrpo_core")
    upward = {
        name: sorted(t for t in _imports(name, path, mods) if (_layer(t) or 0) > _layer(name))
        for name, path in mods.items()
        if _layer(name) is not None
    }
    assert not {k: v for k, v in upward.items() if v}


def test_core_top_level_holds_only_subpackages_and_the_entry_points():
    loose = sorted(p.name for p in (ROOT / "densegrpo_core").glob("*.py"))
    packages = sorted(p.name for p in (ROOT / "densegrpo_core").iterdir() if (p / "__init__.py").exists())
    assert loose == ["__init__.py", "__main__.py"]
    assert set(LAYERS) <= set(packages)


def test_every_core_subpackage_says_what_it_holds_and_may_import():
    for init in (ROOT / "densegrpo_core").glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "May import" in doc or init.parent.name not in LAYERS, init


def test_node_modules_do_not_import_each_other():
    """Shared socket specs live in nodes/sockets.py; a module that defines nodes imports no other such module."""
    mods = _modules("nodes")
    node_modules = {name for name, path in mods.items() if "\nNODES = " in path.read_text()}
    crossing = {name: _imports(name, mods[name], mods) & node_modules for name in node_modules}
    assert not {k: v for k, v in crossing.items() if v}
