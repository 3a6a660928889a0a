"""Run with ComfyUI's python, cwd = the ComfyUI checkout (tests/comfyui/test_diffusers_lora_in_comfyui.py does):

    python diffusers_lora_worker.py TRANSFORMER.safetensors LORA.safetensors INPUTS.pt OUT.json

Loads a diffusers-format SD3 transformer state dict the way UNETLoader does (`comfy.sd.load_diffusion_model`),
applies the LoRA the way LoraLoaderModelOnly does (`comfy.sd.load_lora_for_models`), runs the patched diffusion
model on the saved inputs and writes {"model": class, "not_loaded": [...], "max_abs_diff": x, "lora_effect": x}.
"""

import json
import logging
import sys

import torch

ARGV = sys.argv[1:5]
sys.argv = sys.argv[:1]
sys.path.insert(0, ".")
from comfy.cli_args import args  # noqa: E402  (parsed with [] outside main.py)

args.cpu = True  # before comfy.model_management is imported: no CUDA probing
import comfy.model_management  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.utils  # noqa: E402

transformer_path, lora_path, inputs_path, out_path = ARGV
messages = []


class Capture(logging.Handler):
    def emit(self, record):
        messages.append(record.getMessage())


logging.getLogger().addHandler(Capture())
logging.getLogger().setLevel(logging.INFO)
model = comfy.sd.load_diffusion_model(transformer_path, model_options={"dtype": torch.float32})
lora = comfy.utils.load_torch_file(lora_path, safe_load=True)
patched, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)
inputs = torch.load(inputs_path, weights_only=True)


def run(m):
    comfy.model_management.load_models_gpu([m], force_full_load=True)
    with torch.no_grad():
        return m.model.diffusion_model(
            inputs["x"], inputs["timesteps"], context=inputs["context"], y=inputs["pooled"]
        ).float()


v_base = run(model)
v_lora = run(patched)
with open(out_path, "w") as f:
    json.dump(
        {
            "model": type(model.model).__name__,
            "not_loaded": [m for m in messages if "not loaded" in m],
            "max_abs_diff": (v_lora - inputs["expected"]).abs().max().item(),
            "base_diff": (v_base - inputs["base"]).abs().max().item(),
            "lora_effect": (inputs["expected"] - inputs["base"]).abs().max().item(),
        },
        f,
    )
