"""The models the method runs on: the pipeline protocol, LoRA adapters, diffusers folders, the toy model.

- `protocols`          the contracts every model side meets (the reward's image/prompt inputs)
- `pipeline`           FlowPipeline (velocity model + prompt encoder + decoder), R_t of every rollout endpoint
- `spec`               the model and data keys of a train TOML (`ModelSpec`, prompt lists)
- `families/`          model families as records (SD3/SD3.5, FLUX.1, FLUX.2, Chroma, Qwen-Image, Z-Image, toy):
                       LoRA targets, block lists, defaults, the diffusers and ComfyUI classes each covers;
                       lookups that name the known families
- `lora`               peft LoRA injection, target presets (from the family records), ComfyUI/diffusers files
- `diffusers_pipeline` a diffusers pipeline folder of any family as a FlowPipeline
- `toy/`               the embedded tiny DiT, its procedural task, its reward and shipped weights

May import: torch, `densegrpo_core.method` and `densegrpo_core.util` (diffusers, peft and safetensors inside the
functions that need them). Never rewards, resources, training, jobs or app.
"""
