"""Write the tiny random models of the ComfyUI integration tests, built from ComfyUI's OWN classes.

Run with ComfyUI's python and cwd = the ComfyUI checkout (the harness does this in a subprocess, so the
repository's venv never imports ComfyUI):

    cd $COMFYUI_PATH && .venv/bin/python /path/to/make_tiny_models.py MODELS_DIR [--check]

Writes (fixed seeds, so the files are identical on every run):
- MODELS_DIR/diffusion_models/tiny_sd3.safetensors: `comfy.ldm.modules.diffusionmodules.mmdit.MMDiT`,
  depth 1 (hidden 64, 1 head), patch 2, 16 latent channels in/out, context embedder 4096 -> 64, pooled
  (`y_embedder`) 2048, pos_embed 32x32 patches (images up to 512 px). ComfyUI detects it as SD3
  (`model_base.SD3`, ModelSamplingDiscreteFlow shift 3 + CONST).
- MODELS_DIR/vae_approx/taesd3_encoder.safetensors, taesd3_decoder.safetensors: `comfy.taesd.taesd`
  Encoder/Decoder with 16 latent channels, so `VAELoader` lists "taesd3".
--check loads them back the way UNETLoader / VAELoader do and asserts the detection.
"""

import math
import os
import sys

import torch

SEED = 20260107
POS_EMBED_MAX = 32  # patches per side: 32 * 2 (patch) * 8 (VAE) = 512 px max


def _randomize(module: torch.nn.Module, seed: int, gain: float = 1.0) -> None:
    """Deterministic init of every parameter in name order (ComfyUI's ops leave weights uninitialised)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * (gain / math.sqrt(fan_in)))
            elif name.endswith("weight"):  # norm scales
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))


def tiny_mmdit():
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT

    model = MMDiT(
        patch_size=2,
        in_channels=16,
        out_channels=16,
        depth=1,
        adm_in_channels=2048,
        context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 64}},
        pos_embed_max_size=POS_EMBED_MAX,
        num_patches=POS_EMBED_MAX * POS_EMBED_MAX,
        pos_embed_scaling_factor=None,
        input_size=None,
        dtype=torch.float32,
        device="cpu",
        operations=comfy.ops.disable_weight_init,
    )
    _randomize(model, SEED)
    from comfy.ldm.modules.diffusionmodules.mmdit import get_2d_sincos_pos_embed

    with torch.no_grad():  # a buffer left as torch.empty: the real models' sin-cos table
        table = get_2d_sincos_pos_embed(model.hidden_size, POS_EMBED_MAX)
        model.pos_embed.copy_(torch.from_numpy(table).float().unsqueeze(0))
    assert [n for n, _ in model.named_buffers()] == ["pos_embed"], "an uninitialised buffer would break determinism"
    return model


def tiny_taesd3():
    from comfy.taesd.taesd import Decoder, Encoder

    enc, dec = Encoder(latent_channels=16), Decoder(latent_channels=16)
    _randomize(enc, SEED + 1)
    _randomize(dec, SEED + 2)
    return enc, dec


def write(models_dir: str) -> dict:
    from safetensors.torch import save_file

    paths = {
        "unet": os.path.join(models_dir, "diffusion_models", "tiny_sd3.safetensors"),
        "taesd3_encoder": os.path.join(models_dir, "vae_approx", "taesd3_encoder.safetensors"),
        "taesd3_decoder": os.path.join(models_dir, "vae_approx", "taesd3_decoder.safetensors"),
    }
    enc, dec = tiny_taesd3()
    for key, module in (("unet", tiny_mmdit()), ("taesd3_encoder", enc), ("taesd3_decoder", dec)):
        os.makedirs(os.path.dirname(paths[key]), exist_ok=True)
        sd = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
        save_file(sd, paths[key])
    return paths


def check(paths: dict) -> None:
    import comfy.model_base
    import comfy.model_sampling
    import comfy.sd
    import comfy.utils

    patcher = comfy.sd.load_diffusion_model(paths["unet"])
    assert type(patcher.model) is comfy.model_base.SD3, type(patcher.model)
    ms = patcher.get_model_object("model_sampling")
    assert isinstance(ms, comfy.model_sampling.CONST) and abs(ms.shift - 3.0) < 1e-6, type(ms).__mro__
    sd = {}
    for part in ("encoder", "decoder"):
        for k, v in comfy.utils.load_torch_file(paths["taesd3_" + part]).items():
            sd[f"taesd_{part}.{k}"] = v
    sd["vae_scale"], sd["vae_shift"] = torch.tensor(1.5305), torch.tensor(0.0609)
    vae = comfy.sd.VAE(sd=sd)
    image = vae.decode(torch.zeros(1, 16, 8, 8))
    assert image.shape == (1, 64, 64, 3), image.shape
    print(
        f"check ok: {type(patcher.model).__name__}, {type(ms).__name__} shift {ms.shift}, "
        f"VAE decode {tuple(image.shape)}"
    )


def main(argv):
    if not argv or argv[0].startswith("-"):
        sys.exit(__doc__)
    sys.path.insert(0, os.getcwd())  # cwd = the ComfyUI checkout
    torch.set_num_threads(1)
    from comfy.cli_args import args  # parsed with [] (no argv parsing outside main.py)

    args.cpu = True  # before comfy.model_management is imported: no CUDA probing
    paths = write(os.path.abspath(argv[0]))
    if "--check" in argv[1:]:
        check(paths)
    for p in paths.values():
        print(p, os.path.getsize(p))


if __name__ == "__main__":
    main(sys.argv[1:])
