"""The bench end to end at tiny size: its files, its memory figures, the GPU script's smoke mode."""

import importlib.util
import json
import os

import pytest

from densegrpo_core.app.benchmark import ARCHS, BenchConfig, fit_from_results, register_arch
from densegrpo_core.app.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert main(["bench", "--tiny", "--out", str(out)]) == 0
    with open(out / "bench.json") as f:
        return out, json.load(f)


def test_bench_tiny_writes_json_and_markdown(tiny_result):
    out, result = tiny_result
    assert result["format"] == "densegrpo.bench/2" and result["device"]["kind"] == "cpu"
    plan = {(r["mode"], r["grad_checkpointing"]) for r in result["runs"]}
    assert plan == {(m, c) for m in ("flow_grpo", "dense_grpo") for c in (False, True)}
    for r in result["runs"]:
        assert r["rollout_s"] > 0 and r["update_s"] > 0 and r["optimizer_steps"] >= 1
        assert all(r[f"{s}_peak_delta_bytes"] > 0 for s in ("rollout", "reward", "update"))
        assert r["predicted"]["peak_bytes"] > 0
    assert {q["rollout_nfe_predicted"] for q in result["ratios"]} == {2.0}  # T = 3: 6 NFE vs 3
    md = (out / "bench.md").read_text()
    assert "| dense_grpo | 2 | on |" in md and "DenseGRPO / Flow-GRPO rollout time" in md


def test_bench_shows_checkpointing_lowering_the_update_peak(tiny_result):
    runs = {(r["mode"], r["grad_checkpointing"]): r for r in tiny_result[1]["runs"]}
    for mode in ("flow_grpo", "dense_grpo"):
        assert runs[mode, True]["update_peak_delta_bytes"] < runs[mode, False]["update_peak_delta_bytes"]


def test_constants_fit_from_bench_results(tiny_result):
    kind, constants = fit_from_results([tiny_result[1]])
    assert kind == "cpu" and constants.flops_per_s > 0 and "4 runs" in constants.source


def test_gpu_script_smoke_runs_its_plan_on_a_tiny_model(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_sd35m", os.path.join(ROOT, "bench", "gpu_sd35m.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--tiny", "--group-sizes", "2", "--out", str(tmp_path)]) == 0
    section = (tmp_path / "benchmarks_gpu.md").read_text()
    assert section.startswith("## GPU (SD3.5-M, 512 px)") and "| dense_grpo | 2 | off |" in section
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["config"]["dtype"] == "bfloat16" and result["constants_written"] is False


def test_bench_config_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown modes"):
        BenchConfig(modes=("nope",))
    with pytest.raises(ValueError, match="group sizes must be >= 2"):
        BenchConfig(group_sizes=(1,))


def test_the_core_bench_knows_no_comfyui_arch():
    """ComfyUI's MMDiT joins only through bench/comfy_mmdit.py: the core never imports ComfyUI."""
    assert set(ARCHS) >= {"toy", "dit"} and "mmdit" not in ARCHS
    with pytest.raises(ValueError, match="bench/comfy_mmdit.py registers it"):
        BenchConfig(arch="mmdit")


def test_a_registered_arch_is_benchmarked(tmp_path, monkeypatch):
    monkeypatch.setitem(ARCHS, "my_dit", ARCHS["dit"])
    register_arch("my_dit", ARCHS["dit"])
    import dataclasses

    from densegrpo_core.app.benchmark import run_bench, tiny_config

    config = dataclasses.replace(
        tiny_config(str(tmp_path)), arch="my_dit", grad_checkpointing=(False,), modes=("flow_grpo",), memory=False
    )
    result = run_bench(config)
    assert result["arch"] == "my_dit" and len(result["runs"]) == 1 and "my_dit" in result["model_description"]
