"""Tiny random instances of ComfyUI's own model classes, one module per family, for the family integration tests
(tests/comfyui/test_families_in_comfyui.py). Test-only; never shipped.

ComfyUI's model detection hard-codes most widths (FLUX-style models: 24 heads × 128), so a tiny state dict
saved for UNETLoader would be detected but built at full width. Each family module therefore constructs
ComfyUI's class from its `comfy.supported_models` config with small hyperparameters (`model_from_config`),
exactly the objects UNETLoader would build, only narrower.

A family module `tiny_<family>.py` in this folder defines, without importing ComfyUI at module level:
    CFG: float           the cfg the sample and Train prompts pass (1.0 for guidance-distilled models)
    LATENT_NODE: str     the family's empty-latent node, called with width / height / batch_size
    def build() -> TinyFamily

The `DenseGRPOTest_TinyFamily` node (this package's __init__) returns the family's MODEL, CLIP, VAE and an
empty LATENT; a family is built once per server process, so every prompt gets the same MODEL object.
"""

from __future__ import annotations

import glob
import hashlib
import importlib
import math
import os
from dataclasses import dataclass
from typing import Callable

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def family_names() -> list[str]:
    """Families with a `tiny_<family>.py` module in this folder."""
    stems = [os.path.basename(p)[len("tiny_") : -len(".py")] for p in glob.glob(os.path.join(HERE, "tiny_*.py"))]
    return sorted(s for s in stems if s != "families")


def family_module(name: str):
    if name not in family_names():
        raise ValueError(f"no tiny family {name!r}; known: {', '.join(family_names())}")
    return importlib.import_module(f"{__package__}.tiny_{name}" if __package__ else f"tiny_{name}")


@dataclass
class TinyFamily:
    model: object  # comfy.model_patcher.ModelPatcher over ComfyUI's own BaseModel subclass
    clip: object  # a CLIP stand-in that CLIPTextEncode accepts (TextCLIP)
    vae: object  # comfy.sd.VAE (a random TAESD of the family's latent channels)
    latent: torch.Tensor  # (1, C, h, w): an empty latent as the family's empty-latent node makes it (64 px)
    cfg: float  # = the module's CFG


_BUILT: dict[str, TinyFamily] = {}


def get(name: str) -> TinyFamily:
    """The family's tiny instance, built once per process (the same MODEL object for every prompt)."""
    if name not in _BUILT:
        with torch.inference_mode(False):
            _BUILT[name] = family_module(name).build()
    return _BUILT[name]


def randomize(module: torch.nn.Module, seed: int, gain: float = 1.0) -> None:
    """Deterministic init of every parameter in name order (ComfyUI's ops leave weights uninitialised):
    matrices ~ N(0, gain²/fan_in), norm scales near 1, biases small."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * (gain / math.sqrt(p[0].numel())))
            elif name.endswith(("weight", "scale")):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))


def model_from_config(supported_model, unet_config: dict, seed: int, dtype=torch.float32):
    """A ModelPatcher over ComfyUI's model for `supported_model` (a comfy.supported_models class) built with
    `unet_config`, as comfy.sd.load_diffusion_model_state_dict builds it after detection, random weights."""
    import comfy.model_management
    import comfy.model_patcher

    config = supported_model(unet_config)
    config.set_inference_dtype(dtype, None)
    model = config.get_model({}, "")
    randomize(model.diffusion_model, seed)
    model = model.to(comfy.model_management.unet_offload_device())
    return comfy.model_patcher.ModelPatcher(
        model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )


def text_generator(text: str, seed: int) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}\0{text}".encode("utf-8")).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


class TextCLIP:
    """Duck-types the parts of comfy.sd.CLIP that CLIPTextEncode and the DenseGRPO nodes use. `encode(text)`
    returns (cond (1, L, D), extras dict), deterministic in the text; CONDITIONING is [[cond, extras]]."""

    def __init__(self, encode: Callable[[str], tuple[torch.Tensor, dict]]):
        self.encode = encode

    def tokenize(self, text, return_word_ids=False, **kwargs):
        return {"text": text}

    def encode_from_tokens(self, tokens, return_pooled=False, return_dict=False):
        cond, extras = self.encode(tokens["text"])
        if return_dict:
            return {"cond": cond, **extras}
        return (cond, extras.get("pooled_output")) if return_pooled else cond

    def encode_from_tokens_scheduled(self, tokens, unprojected=False, add_dict=None, show_pbar=True):
        cond, extras = self.encode(tokens["text"])
        return [[cond, {**extras, **(add_dict or {})}]]

    def clone(self):
        return self


def tiny_taesd_vae(latent_channels: int, seed: int):
    """comfy.sd.VAE over a random TAESD with `latent_channels` (ComfyUI detects TAESD from the decoder keys and
    reads the channel count from `taesd_decoder.1.weight`)."""
    import comfy.sd
    from comfy.taesd.taesd import TAESD

    net = TAESD(latent_channels=latent_channels)
    randomize(net, seed, gain=0.5)
    return comfy.sd.VAE(sd=dict(net.state_dict()))
