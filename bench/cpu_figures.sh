#!/usr/bin/env bash
# The CPU figures of docs/benchmarks.md (about 10 minutes on 2 shared cores, one thread), then the CPU
# constants of densegrpo_core/resources/estimate.py refitted from all three runs.
#   bench/cpu_figures.sh [OUT]          (default OUT: bench_out/cpu)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-bench_out/cpu}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# a small model of SD3.5-M's structure: joint-attention DiT, 64 image + 16 text tokens, 4 blocks of width 128
SIZE="--arch dit --width 128 --depth 4 --heads 4 --latent-size 16 --latent-channels 4 --context-tokens 16
      --steps 10 --prompts 1 --train-batch 4 --lora-rank 8 --iterations 2"
# 1. gradient checkpointing off vs on
$PY -m densegrpo_core bench $SIZE --group-sizes 8 --grad-checkpointing both --max-batch 32 --out "$OUT/checkpointing"
# 2. G = 8, 16, 24 with a fixed rollout chunk (max_batch 32 rows)
$PY -m densegrpo_core bench $SIZE --group-sizes 8,16,24 --grad-checkpointing on --max-batch 32 --out "$OUT/chunked"
# 3. the same without chunking (one forward call per grid step, up to 2·T·G rows)
$PY -m densegrpo_core bench $SIZE --group-sizes 8,16,24 --grad-checkpointing on --max-batch 100000 \
    --modes dense_grpo --out "$OUT/unchunked"
$PY bench/fit_constants.py --write "$OUT"/checkpointing/bench.json "$OUT"/chunked/bench.json "$OUT"/unchunked/bench.json
