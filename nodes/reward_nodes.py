"""Reward model nodes: one loader per built-in reward (files from models/reward_models/), a loader for the
custom rewards the user installed in models/reward_models/custom/ (a workflow can only choose among
those: it never names a module to import), a weighted sum, a scorer for any IMAGE, and a node that frees the cached
models.

The loaders are generated from the core's reward registry, so a reward added there gets its node here.
"""

from __future__ import annotations

import json
import os

from densegrpo_core.rewards import REWARD_REGISTRY, WeightedReward

from . import comfy_bridge as bridge
from .sockets import REWARD_TYPE

FOLDER = "reward_models"
NONE_FOUND = "(no files found: see the tooltip)"
CUSTOM_FOLDER = "custom"
NO_CUSTOM = "(no custom rewards: see the tooltip)"


def register_folder() -> None:
    """Make `models/reward_models/` a ComfyUI model folder (extra_model_paths.yaml may add more)."""
    import folder_paths

    if FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER))


def reward_model_dirs() -> list[str]:
    import folder_paths

    register_folder()
    return list(folder_paths.get_folder_paths(FOLDER))


def list_entries(bases: list[str], folder: str) -> list[str]:
    """Choices for one reward: its folder itself and each file/subfolder in it, as paths relative to a base."""
    out = []
    for base in bases:
        root = os.path.join(base, folder)
        if not os.path.isdir(root):
            continue
        for name in [folder] + [f"{folder}/{e}" for e in sorted(os.listdir(root)) if not e.startswith(".")]:
            if name not in out:
                out.append(name)
    return out


def resolve_entry(name: str, bases: list[str], node: str) -> str:
    """The full path of a listed entry; never outside the reward_models folders."""
    for base in bases:
        path = os.path.realpath(os.path.join(base, name))
        base_real = os.path.realpath(base)
        if os.path.commonpath([path, base_real]) == base_real and os.path.exists(path):
            return path
    raise bridge.input_error(node, "path", f"{name!r} is not in {' or '.join(bases)}")


def _device(choice: str):
    if choice == "cpu":
        return "cpu"
    import comfy.model_management

    return comfy.model_management.get_torch_device()


DEVICE = (["auto", "cpu"], {"default": "auto", "tooltip": "auto = ComfyUI's GPU (float16 there), else CPU"})
BATCH = ("INT", {"default": 16, "min": 1, "max": 1024, "tooltip": "most images per reward forward pass"})


class RewardNode:
    """What the nodes that make a REWARD_MODEL share: their category and their one output."""

    CATEGORY = "DenseGRPO/rewards"
    FUNCTION = "execute"
    RETURN_TYPES = (REWARD_TYPE,)
    RETURN_NAMES = ("reward_model",)


def make_loader(spec) -> type:
    """A loader node class for one registered reward."""
    node = f"DenseGRPO Load {spec.display_name}"
    where = f"models/{FOLDER}/{spec.folder}/" if spec.folder else ""
    files = "; ".join(spec.expected_files)

    class Loader(RewardNode):
        DESCRIPTION = f"{spec.display_name}: {spec.description}. Score: {spec.formula}." + (
            f" Files ({files}) go in {where} — from {spec.upstream}." if spec.needs_path else ""
        )
        OUTPUT_TOOLTIPS = (f"the {spec.display_name} reward (images, prompts) → scores",)

        @classmethod
        def INPUT_TYPES(cls):
            required = {}
            if spec.needs_path:
                choices = list_entries(reward_model_dirs(), spec.folder) or [NONE_FOUND]
                required["path"] = (
                    choices,
                    {"tooltip": f"the {spec.path_kind.replace('_', ' or ')} with {files}, under {where}"},
                )
            required["device"] = DEVICE
            return {"required": required, "optional": {"batch_size": BATCH}}

        def execute(self, device="auto", batch_size=16, path=None):
            full = None
            if spec.needs_path:
                if path in (None, NONE_FOUND):
                    raise bridge.input_error(
                        node,
                        "path",
                        f"is empty: put the {spec.display_name} files ({files}) "
                        f"in {where} (from {spec.upstream}) and refresh",
                    )
                full = resolve_entry(path, reward_model_dirs(), node)
            try:
                return (spec.load(full, device=_device(device), batch_size=int(batch_size)),)
            except (ValueError, FileNotFoundError) as e:
                raise bridge.NodeInputError(f"{node}: {e}") from None

    Loader.__name__ = Loader.__qualname__ = f"Load_{spec.name}"
    return Loader


def custom_reward_dirs() -> list[str]:
    """models/reward_models/custom/ (and the custom/ folder of every extra reward_models path)."""
    return [os.path.join(base, CUSTOM_FOLDER) for base in reward_model_dirs()]


class LoadCustomReward(RewardNode):
    NODE = "DenseGRPO Load Custom Reward"
    DESCRIPTION = (
        "A reward from your own Python file in models/reward_models/custom/: the file defines "
        "`def reward(images, prompts) -> scores` (images (B, H, W, 3) in [0, 1], one score per image), "
        'or lists several functions in `REWARDS = ["name", ...]`. Only files you put there can be chosen '
        "(a shared workflow cannot make ComfyUI import anything else); restart or refresh after adding one."
    )
    OUTPUT_TOOLTIPS = ("the custom reward",)

    @classmethod
    def INPUT_TYPES(cls):
        from densegrpo_core.rewards.custom_files import list_custom_rewards

        choices = list_custom_rewards(custom_reward_dirs()) or [NO_CUSTOM]
        return {
            "required": {
                "function": (
                    choices,
                    {
                        "tooltip": (
                            "<file>.py:<function> among the rewards installed in models/reward_models/custom/ "
                            "(a file's `def reward(images, prompts)`, or the names in its REWARDS list)"
                        )
                    },
                )
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, function):
        """Runs before the prompt: anything but an installed custom reward is refused here."""
        try:
            cls.resolve(function)
        except bridge.NodeInputError as e:
            return str(e)
        return True

    @classmethod
    def resolve(cls, function) -> tuple[str, str]:
        from densegrpo_core.rewards.custom_files import resolve_custom_reward

        folders = custom_reward_dirs()
        if function in (None, "", NO_CUSTOM):
            raise bridge.input_error(
                cls.NODE,
                "function",
                f"is empty: put a Python file with `def reward(images, prompts)` in {folders[0]} and refresh",
            )
        try:
            return resolve_custom_reward(function, folders)
        except ValueError as e:
            raise bridge.input_error(
                cls.NODE,
                "function",
                f"{e} (workflows can only choose installed rewards; the headless CLI keeps --reward module:function)",
            ) from None

    def execute(self, function):
        from densegrpo_core.rewards.custom_files import load_reward_file

        path, name = self.resolve(function)
        try:
            return (load_reward_file(path, name),)
        except ValueError as e:
            raise bridge.input_error(self.NODE, "function", str(e)) from None


class CombineRewards(RewardNode):
    DESCRIPTION = "A weighted sum of two rewards, w_a·r_a + w_b·r_b (chain the node for more terms)."
    OUTPUT_TOOLTIPS = ("the weighted sum; each term is reported by DenseGRPO Score Images",)

    @classmethod
    def INPUT_TYPES(cls):
        weight = ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.05, "tooltip": "weight"})
        return {
            "required": {
                "reward_a": (REWARD_TYPE, {"tooltip": "first term"}),
                "weight_a": weight,
                "reward_b": (REWARD_TYPE, {"tooltip": "second term"}),
                "weight_b": weight,
            }
        }

    def execute(self, reward_a, weight_a, reward_b, weight_b):
        names = [getattr(r, "name", f"reward_{i}") for i, r in enumerate((reward_a, reward_b))]
        if names[0] == names[1]:
            names = [f"{names[0]}_a", f"{names[1]}_b"]
        return (WeightedReward({names[0]: (weight_a, reward_a), names[1]: (weight_b, reward_b)}),)


class ScoreImages:
    DESCRIPTION = "Score any images with a reward model against a prompt (one prompt for all, or one per line)."
    CATEGORY = "DenseGRPO/rewards"
    FUNCTION = "execute"
    OUTPUT_NODE = True
    RETURN_TYPES = ("FLOAT", "STRING")
    RETURN_NAMES = ("mean_score", "scores")
    OUTPUT_TOOLTIPS = ("mean score over the batch", "JSON: scores per image (and per term of a weighted sum)")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "images to score"}),
                "reward_model": (REWARD_TYPE, {"tooltip": "the reward"}),
                "prompt": (
                    "STRING",
                    {"multiline": True, "default": "", "tooltip": "one prompt for every image, or one line per image"},
                ),
            }
        }

    def execute(self, images, reward_model, prompt):
        node = "DenseGRPO Score Images"
        lines = [p.strip() for p in prompt.splitlines() if p.strip()]
        if not lines:
            raise bridge.input_error(node, "prompt", "is empty: the reward scores images against a prompt")
        if len(lines) == 1:
            lines = lines * images.shape[0]
        if len(lines) != images.shape[0]:
            raise bridge.input_error(
                node,
                "prompt",
                f"has {len(lines)} lines for {images.shape[0]} images (give one prompt, or one per image)",
            )
        try:
            scores = reward_model(images.float(), lines).float().cpu()
        except ValueError as e:
            raise bridge.NodeInputError(f"{node}: {e}") from None
        out = {"scores": scores.tolist()}
        terms = getattr(reward_model, "last_terms", None)
        if terms:
            out["terms"] = {k: v.float().cpu().tolist() for k, v in terms.items()}
        text = json.dumps(out)
        return {"ui": {"text": [text]}, "result": (scores.mean().item(), text)}


class ReleaseRewardModels:
    DESCRIPTION = "Free the reward models DenseGRPO keeps cached (GPU memory) until they are loaded again."
    CATEGORY = "DenseGRPO/rewards"
    FUNCTION = "execute"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("status",)
    OUTPUT_TOOLTIPS = ("how many models were released",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    @classmethod
    def IS_CHANGED(cls):
        return float("nan")

    def execute(self):
        from densegrpo_core.rewards import release_rewards

        text = f"released {release_rewards()} reward model(s)"
        return {"ui": {"text": [text]}, "result": (text,)}


_LOADER_IDS = {
    "pickscore": "DenseGRPO_LoadPickScore",
    "pickscore_flowgrpo": "DenseGRPO_LoadPickScoreFlowGRPO",
    "hpsv2": "DenseGRPO_LoadHPSv2",
    "aesthetic": "DenseGRPO_LoadAesthetic",
    "clipscore": "DenseGRPO_LoadCLIPScore",
    "jpeg_compressibility": "DenseGRPO_LoadJPEGCompressibility",
    "jpeg_incompressibility": "DenseGRPO_LoadJPEGIncompressibility",
}

NODES = {
    node_id: (make_loader(REWARD_REGISTRY[name]), f"DenseGRPO Load {REWARD_REGISTRY[name].display_name}")
    for name, node_id in _LOADER_IDS.items()
    if name in REWARD_REGISTRY
}
NODES.update(
    {
        "DenseGRPO_LoadCustomReward": (LoadCustomReward, "DenseGRPO Load Custom Reward"),
        "DenseGRPO_CombineRewards": (CombineRewards, "DenseGRPO Combine Rewards"),
        "DenseGRPO_ScoreImages": (ScoreImages, "DenseGRPO Score Images"),
        "DenseGRPO_ReleaseRewardModels": (ReleaseRewardModels, "DenseGRPO Release Reward Models"),
    }
)
