"""Applications of the core: the command line, the demo and the benchmark.

- `cli`        `python -m densegrpo_core demo | sample | calibrate | visualize | train | bench`
- `demo`       DenseGRPO vs Flow-GRPO on the embedded toy model, end to end
- `benchmark/` benchmark-only code: BenchConfig, a random-weight SD3-structure DiT, measured runs, reports

May import: everything in densegrpo_core. Nothing imports app but `__main__` and scripts.
"""
