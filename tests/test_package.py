"""Packaging: the core imports without heavy libraries; the ComfyUI entry point imports nothing ComfyUI has not
already imported (torch yes; peft, transformers, open_clip, matplotlib no) and registers every node."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "peft", "transformers", "open_clip", "matplotlib")


def imported_modules(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True, cwd=ROOT.parent)
    return set(out.stdout.split())


def test_core_package_import_is_light():
    mods = imported_modules("import densegrpo_core")
    assert not [m for m in HEAVY if m in mods]


def test_comfyui_entry_point_import_is_light():
    code = (f"import importlib.util\n"
            f"spec = importlib.util.spec_from_file_location('densegrpo_pack', {str(ROOT / '__init__.py')!r},\n"
            f"    submodule_search_locations=[{str(ROOT)!r}])\n"
            f"pack = importlib.util.module_from_spec(spec); import sys; sys.modules['densegrpo_pack'] = pack\n"
            f"spec.loader.exec_module(pack)\n"
            f"assert isinstance(pack.NODE_CLASS_MAPPINGS, dict)")
    mods = imported_modules(code)
    assert not [m for m in HEAVY if m != "torch" and m in mods]


def test_comfyui_entry_point_registers_nodes_with_display_names():
    code = (f"import importlib.util\n"
            f"spec = importlib.util.spec_from_file_location('densegrpo_pack', {str(ROOT / '__init__.py')!r},\n"
            f"    submodule_search_locations=[{str(ROOT)!r}])\n"
            f"pack = importlib.util.module_from_spec(spec); import sys; sys.modules['densegrpo_pack'] = pack\n"
            f"spec.loader.exec_module(pack)\n"
            f"ids = sorted(pack.NODE_CLASS_MAPPINGS)\n"
            f"assert ids and ids == sorted(pack.NODE_DISPLAY_NAME_MAPPINGS), ids\n"
            f"assert all(i.startswith('DenseGRPO_') for i in ids), ids\n"
            f"assert all(c.CATEGORY.startswith('DenseGRPO/') for c in pack.NODE_CLASS_MAPPINGS.values())\n"
            f"print('OK', len(ids))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT.parent)
    assert out.returncode == 0 and out.stdout.startswith("OK"), out.stderr
