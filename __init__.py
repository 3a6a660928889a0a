"""ComfyUI-DenseGRPO: ComfyUI entry point. Heavy imports happen inside the nodes, never here."""
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
