"""bench/comfy_mmdit.py: ComfyUI's own MMDiT joins the benchmark from outside the core (skipped without
$COMFYUI_PATH)."""

import json
import os
import subprocess

import harness
import pytest

pytestmark = pytest.mark.comfyui
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_comfy_mmdit_script_benchmarks_comfyuis_own_mmdit(tmp_path):
    path, _ = harness.find_comfyui()
    args = [
        "--comfyui",
        path,
        "--width",
        "128",
        "--depth",
        "2",
        "--latent-size",
        "8",
        "--latent-channels",
        "16",
        "--context-tokens",
        "4",
        "--steps",
        "2",
        "--group-sizes",
        "2",
        "--prompts",
        "1",
        "--iterations",
        "1",
        "--modes",
        "flow_grpo",
        "--no-memory",
        "--max-batch",
        "8",
        "--train-batch",
        "2",
        "--lora-rank",
        "2",
        "--out",
        str(tmp_path),
    ]
    r = subprocess.run(
        [harness.comfy_python(path), os.path.join(ROOT, "bench", "comfy_mmdit.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["arch"] == "mmdit" and "ComfyUI MMDiT" in result["model_description"]
    assert result["runs"][0]["optimizer_steps"] >= 1
