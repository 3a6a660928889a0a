"""Cost benchmark: seconds and peak memory per stage (rollout, decode + reward, update) of real trainer
iterations, per advantage mode, group size and memory setting; NFE per trajectory (fused vs naive, docs/method.md §9).

Benchmark-only code, kept out of the method's modules:
    config.py   BenchConfig, the tiny smoke-run preset
    dit.py      a random-weight joint-attention DiT of SD3's structure at any size (SD3.5-M's by default)
    models.py   the networks (toy, dit, and any `register_arch` adds) and decoder/reward stand-ins
    runs.py     measured runs, fused vs naive rollouts, the estimator's constants refitted from them
    report.py   bench.md
ComfyUI's own MMDiT needs ComfyUI, which the core never imports: `bench/comfy_mmdit.py` (repository root)
registers it as arch "mmdit". Writes `bench.json` and `bench.md`; every figure is measured, except the
columns that say "predicted" (NFE counts, estimate.py).
"""

from . import models  # noqa: F401  (registers the "toy" and "dit" archs)
from .config import ARCHS, STAGES, BenchConfig, register_arch, tiny_config
from .runs import fit_from_results, run_bench

__all__ = ["ARCHS", "STAGES", "BenchConfig", "fit_from_results", "register_arch", "run_bench", "tiny_config"]
