"""DenseGRPO core: dense-reward GRPO for flow-matching text-to-image models, headless.

Never imports ComfyUI. Import the submodules you need (`densegrpo_core.method.rollout`, …); this package
module itself stays light so that the ComfyUI pack imports fast.
"""

__version__ = "0.1.0"
