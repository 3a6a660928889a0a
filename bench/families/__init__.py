"""Real-size configurations of each model family's ComfyUI network, for the memory table
(bench/memory_table.py). One module per family; each defines:

    REAL_SIZES: dict[str, dict]   model name → the unet_config ComfyUI's model_detection gives the real checkpoint
    def build(unet_config, dtype, device, operations) -> nn.Module   ComfyUI's diffusion network class
    CONTEXT_TOKENS: int           typical text tokens in the joint attention
    LATENT_CHANNELS: int          channels of the latent the network sees
    LATENT_DOWNSCALE: int         image pixels per latent pixel
    USES_CFG: bool                trained with classifier-free guidance (a second, detached pass)
"""

import glob
import importlib
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def family_modules() -> dict:
    """family → its module, in file-name order."""
    names = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(HERE, "*.py")))
    return {n: importlib.import_module(f"families.{n}") for n in names if n != "__init__"}
