"""The embedded toy DiT (`densegrpo_core.models.toy`): the core's own network, no ComfyUI or diffusers side."""

from __future__ import annotations

from .record import Implementation, ModelFamily

TOY = ModelFamily(
    name="toy",
    description="the embedded tiny DiT (densegrpo_core.models.toy)",
    # densegrpo_core.models.toy.model.ToyDiT: blocks.N.{attn.qkv, attn.proj, mlp.fc1, mlp.fc2, adaLN_modulation}
    core=Implementation(
        preset="toy",
        targets=r"blocks\.\d+\.(?:attn\.(?:qkv|proj)|mlp\.fc[12]|adaLN_modulation)",
        block_lists=("blocks",),
    ),
    default_shift=None,  # the shipped weights' metadata (toy.load_toy: shift, cfg_scale)
    default_cfg=None,
    uses_cfg=True,
)
