"""Memory and time: what a run needs and the features that make it fit.

- `memory`       gradient checkpointing, offloading between stages, the stage meter
- `estimate`     peak memory and seconds per iteration predicted from the model's counts (its fitted
                 constants in `estimate_constants.json`)
- `fit_options`  what would make a refused run fit (fp8 base, checkpointing, smaller batches)

May import: method, models, util. Never rewards, training, jobs or app: the estimator reads a config's
fields, it does not import the config class.
"""
