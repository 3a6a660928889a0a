"""Registry readiness and the front-end files as ComfyUI-Manager and the Comfy Registry meet them."""

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_requirements_never_list_torch():
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    names = [re.split(r"[<>=!~\[; ]", line)[0].lower() for line in lines if line]
    assert names and not [n for n in names if n in ("torch", "torchvision", "torchaudio")]


def test_the_licence_file_is_mit_and_pyproject_points_at_it():
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    project = pyproject()["project"]
    assert project["license"] == {"file": "LICENSE"}
    assert "License :: OSI Approved :: MIT License" in project["classifiers"]


def test_pyproject_has_what_the_registry_asks_for():
    d = pyproject()
    comfy, project = d["tool"]["comfy"], d["project"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["Icon"].startswith("https://")
    assert comfy["Icon"].endswith("docs/img/icon.png") and (ROOT / "docs" / "img" / "icon.png").is_file()
    assert comfy["requires-comfyui"].startswith(">=")
    assert any(c.startswith("Operating System ::") for c in project["classifiers"])
    assert any(c.startswith("Environment :: GPU ::") for c in project["classifiers"])
    assert {"Repository", "Documentation", "Issues"} <= set(project["urls"])


def test_the_web_directory_holds_the_extension_and_the_vendored_chart_library_with_its_licence():
    init = (ROOT / "__init__.py").read_text()
    assert 'WEB_DIRECTORY = "./web"' in init
    js = (ROOT / "web" / "densegrpo.js").read_text()
    assert 'from "../../scripts/app.js"' in js and "addEventListener(EVENT" in js
    assert (ROOT / "web" / "vendor" / "uplot" / "uPlot.esm.js").is_file()
    assert (ROOT / "web" / "vendor" / "uplot" / "LICENSE").read_text().startswith("The MIT License")
