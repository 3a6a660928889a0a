"""Packaging: the ComfyUI entry point and the core package import without torch or other heavy libraries."""
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
            f"pack = importlib.util.module_from_spec(spec); spec.loader.exec_module(pack)\n"
            f"assert isinstance(pack.NODE_CLASS_MAPPINGS, dict)")
    mods = imported_modules(code)
    assert not [m for m in HEAVY if m in mods]
