"""Run with ComfyUI's python, cwd = the ComfyUI checkout:

    python comfy_lora_worker.py SPEC.json

SPEC.json: {"transformer": state dict .safetensors, "lora": .safetensors, "inputs": .pt, "out": .json,
            "builder": optional "FILE.py:FUNCTION"}.

Loads the transformer the way UNETLoader does (`comfy.sd.load_diffusion_model_state_dict`: ComfyUI detects the
class, converting a diffusers-format state dict) — or, for a family whose tiny widths ComfyUI's detection cannot
build, through `builder(state_dict) -> ModelPatcher` (test code that constructs ComfyUI's class and loads the
weights the way ComfyUI's converter does) — applies the LoRA the way LoraLoaderModelOnly does
(`comfy.sd.load_lora_for_models`) and runs `model.apply_model(x, sigma, **cond)`, ComfyUI's denoised prediction,
without and with the LoRA. INPUTS.pt (torch.save, read with weights_only): {"x", "sigma", "cond": {kwarg: tensor},
"expected": denoised with the LoRA, "base": denoised without}. Writes {"model": class name, "not_loaded": [log
lines], "max_abs_diff": |with LoRA − expected|, "base_diff": |without − base|, "lora_effect": |expected − base|}.
"""

import importlib.util
import json
import logging
import sys

import torch

SPEC = sys.argv[1]
sys.argv = sys.argv[:1]
sys.path.insert(0, ".")
from comfy.cli_args import args  # noqa: E402  (parsed with [] outside main.py)

args.cpu = True  # before comfy.model_management is imported: no CUDA probing
import comfy.model_management  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.utils  # noqa: E402

with open(SPEC) as f:
    spec = json.load(f)
messages = []


class Capture(logging.Handler):
    def emit(self, record):
        messages.append(record.getMessage())


logging.getLogger().addHandler(Capture())
logging.getLogger().setLevel(logging.INFO)
sd = comfy.utils.load_torch_file(spec["transformer"], safe_load=True)
if spec.get("builder"):
    path, function = spec["builder"].rsplit(":", 1)
    module_spec = importlib.util.spec_from_file_location("comfy_lora_builder", path)
    builder = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(builder)
    model = getattr(builder, function)(sd)
else:
    model = comfy.sd.load_diffusion_model_state_dict(sd, model_options={"dtype": torch.float32})
lora = comfy.utils.load_torch_file(spec["lora"], safe_load=True)
patched, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)
inputs = torch.load(spec["inputs"], weights_only=True)


def run(m):
    comfy.model_management.load_models_gpu([m], force_full_load=True)
    with torch.no_grad():
        return m.model.apply_model(inputs["x"], inputs["sigma"], **inputs["cond"]).float()


base = run(model)
with_lora = run(patched)
with open(spec["out"], "w") as f:
    json.dump(
        {
            "model": type(model.model).__name__,
            "not_loaded": [m for m in messages if "not loaded" in m],
            "max_abs_diff": (with_lora - inputs["expected"]).abs().max().item(),
            "base_diff": (base - inputs["base"]).abs().max().item(),
            "lora_effect": (inputs["expected"] - inputs["base"]).abs().max().item(),
        },
        f,
    )
