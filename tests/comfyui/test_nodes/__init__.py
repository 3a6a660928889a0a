"""Test-only ComfyUI node pack (V1) for DenseGRPO's integration tests; the harness links it into
custom_nodes/densegrpo_test_nodes. Never shipped, never loaded outside the tests.

- DenseGRPOTest_SD3Conditioning: SD3-shaped CONDITIONING from (text, seed) without a text encoder:
  [[cond (1, 8, 4096), {"pooled_output": (1, 2048)}]], deterministic, different texts -> different conds.
- DenseGRPOTest_EmptyConditioning: the same shapes, all zeros (a cheap negative).
- DenseGRPOTest_TinyCLIP: a CLIP stand-in that CLIPTextEncode accepts; it encodes like SD3Conditioning
  with seed 0 (for workflows that use CheckpointLoaderSimple's CLIP output + CLIPTextEncode).
- DenseGRPOTest_DescribeModel: output node; its /history output "text" holds a JSON description of a MODEL
  (model class, model_sampling classes, flow or not, latent channels).
- DenseGRPOTest_MemoryState: output node (never cached); its "text" holds JSON of ComfyUI's model management:
  the loaded models (class, device, loaded / total bytes, whether it is the connected MODEL's network) and
  `extra_reserved_memory()`; an optional MODEL
  input keeps that model's loader output (and so its loaded entry) alive without loading it.
- DenseGRPOTest_Fail: output node that raises ValueError(message) (tests the error reporting).
- DenseGRPOTest_ConstantReward: a REWARD_MODEL scoring every image 0.5 (a run without reward signal).
- DenseGRPOTest_TinyFamily: (family) → MODEL, CLIP, VAE, LATENT: a tiny random instance of ComfyUI's own model
  class for each family module `tiny_<family>.py` (tiny_families.py), built once per server process.
"""

import hashlib
import json

import torch

TOKENS, CONTEXT_DIM, POOLED_DIM = 8, 4096, 2048


def sd3_conditioning(text: str, seed: int = 0):
    digest = hashlib.sha256(f"{seed}\0{text}".encode("utf-8")).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    cond = torch.randn((1, TOKENS, CONTEXT_DIM), generator=g)
    pooled = torch.randn((1, POOLED_DIM), generator=g)
    return cond, pooled


class SD3Conditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "text": ("STRING", {"default": "a red cube", "multiline": True, "tooltip": "Any text; hashed."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip": "Mixed into the hash."}),
            }
        }

    RETURN_TYPES = ("CONDITIONING",)
    OUTPUT_TOOLTIPS = ("SD3-shaped random conditioning, deterministic in (text, seed).",)
    FUNCTION = "encode"
    CATEGORY = "DenseGRPO_test"

    def encode(self, text, seed):
        cond, pooled = sd3_conditioning(text, seed)
        return ([[cond, {"pooled_output": pooled}]],)


class EmptyConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("CONDITIONING",)
    OUTPUT_TOOLTIPS = ("SD3-shaped all-zero conditioning.",)
    FUNCTION = "encode"
    CATEGORY = "DenseGRPO_test"

    def encode(self):
        return ([[torch.zeros((1, TOKENS, CONTEXT_DIM)), {"pooled_output": torch.zeros((1, POOLED_DIM))}]],)


class _TinyClipObject:
    """Duck-types the parts of comfy.sd.CLIP that CLIPTextEncode uses."""

    def tokenize(self, text, return_word_ids=False, **kwargs):
        return {"text": text}

    def encode_from_tokens(self, tokens, return_pooled=False, return_dict=False):
        cond, pooled = sd3_conditioning(tokens["text"], 0)
        if return_dict:
            return {"cond": cond, "pooled_output": pooled}
        return (cond, pooled) if return_pooled else cond

    def encode_from_tokens_scheduled(self, tokens, unprojected=False, add_dict=None, show_pbar=True):
        out = self.encode_from_tokens(tokens, return_pooled=True, return_dict=True)
        cond = out.pop("cond")
        out.update(add_dict or {})
        return [[cond, out]]

    def clone(self):
        return self


class TinyCLIP:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("CLIP",)
    OUTPUT_TOOLTIPS = ("A CLIP stand-in: CLIPTextEncode gives SD3-shaped conds hashed from the text.",)
    FUNCTION = "load"
    CATEGORY = "DenseGRPO_test"

    def load(self):
        return (_TinyClipObject(),)


class DescribeModel:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL", {"tooltip": "The model to describe."})}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "describe"
    CATEGORY = "DenseGRPO_test"

    def describe(self, model):
        import comfy.model_sampling

        ms = model.get_model_object("model_sampling")
        info = {
            "model_class": type(model.model).__name__,
            "model_type": str(getattr(model.model, "model_type", "")),
            "model_sampling_mro": [c.__name__ for c in type(ms).__mro__],
            "is_flow": isinstance(ms, comfy.model_sampling.CONST),
            "shift": float(getattr(ms, "shift", float("nan"))),
            "latent_channels": int(model.model.latent_format.latent_channels),
        }
        return {"ui": {"text": [json.dumps(info)]}}


class Fail:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"message": ("STRING", {"default": "test failure", "tooltip": "The error text."})}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "fail"
    CATEGORY = "DenseGRPO_test"

    def fail(self, message):
        raise ValueError(message)


class RandomLatent:
    """A non-empty latent with any channel count (ComfyUI silently widens all-zero latents)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "channels": ("INT", {"default": 4, "min": 1, "max": 64}),
                "size": ("INT", {"default": 8, "min": 1, "max": 256}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "make"
    CATEGORY = "DenseGRPOTest"

    def make(self, channels, size):
        g = torch.Generator().manual_seed(0)
        return ({"samples": torch.randn((1, channels, size, size), generator=g)},)


class Passthrough:
    """Returns its MODEL unchanged; a new `nonce` makes every downstream node run again on the same MODEL
    object (ComfyUI caches node outputs by their input signature)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "nonce": ("INT", {"default": 0, "min": 0, "max": 1 << 30})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "run"
    CATEGORY = "DenseGRPOTest"

    def run(self, model, nonce):
        return (model,)


class TinyFamily:
    @classmethod
    def INPUT_TYPES(cls):
        from .tiny_families import family_names

        return {"required": {"family": (family_names(), {"tooltip": "A tiny_<family>.py module of the test pack."})}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE", "LATENT")
    FUNCTION = "load"
    CATEGORY = "DenseGRPO_test"

    def load(self, family):
        from .tiny_families import get

        tiny = get(family)
        return (tiny.model, tiny.clip, tiny.vae, {"samples": tiny.latent.clone()})


class MemoryState:
    """Connect a MODEL to keep its loader's cached output alive in this prompt (ComfyUI drops the outputs of
    nodes a prompt does not use, and with them the model's loaded-list entry); it is not loaded."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}, "optional": {"model": ("MODEL",)}}

    @classmethod
    def IS_CHANGED(cls, **_):
        return float("nan")

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "describe"
    CATEGORY = "DenseGRPO_test"

    def describe(self, model=None):
        import comfy.model_management as mm

        loaded = [
            {
                "class": type(lm.model.model).__name__,
                "device": str(lm.device),
                "loaded_bytes": int(lm.model_loaded_memory()),
                "total_bytes": int(lm.model_memory()),
                "is_input": model is not None and lm.model.model is model.model,  # the connected MODEL's network
            }
            for lm in mm.current_loaded_models
            if lm.model is not None
        ]
        return {"ui": {"text": [json.dumps({"loaded": loaded, "extra_reserved": int(mm.extra_reserved_memory())})]}}


class ConstantScore:
    """A reward that scores every image 0.5: GRPO gets no signal from it (the "no_signal" health warning)."""

    name = "constant"

    def __call__(self, images, prompts):
        return torch.full((images.shape[0],), 0.5)


class ConstantReward:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("REWARD_MODEL",)
    FUNCTION = "load"
    CATEGORY = "DenseGRPO_test"

    def load(self):
        return (ConstantScore(),)


NODE_CLASS_MAPPINGS = {
    "DenseGRPOTest_ConstantReward": ConstantReward,
    "DenseGRPOTest_MemoryState": MemoryState,
    "DenseGRPOTest_Passthrough": Passthrough,
    "DenseGRPOTest_RandomLatent": RandomLatent,
    "DenseGRPOTest_SD3Conditioning": SD3Conditioning,
    "DenseGRPOTest_EmptyConditioning": EmptyConditioning,
    "DenseGRPOTest_TinyCLIP": TinyCLIP,
    "DenseGRPOTest_DescribeModel": DescribeModel,
    "DenseGRPOTest_Fail": Fail,
    "DenseGRPOTest_TinyFamily": TinyFamily,
}
NODE_DISPLAY_NAME_MAPPINGS = {k: k.replace("DenseGRPOTest_", "Test: ") for k in NODE_CLASS_MAPPINGS}
