"""Test-only ComfyUI nodes, copied into a test or benchmark server's ``custom_nodes`` (never shipped).

``AltDiffusionTestProbe``: what holds memory in the server process (``tests/test_soak.py``,
``bench/alternating_memory.py``).

``TestModelInOtherOrder``: the same MODEL computing every UNet call with oneDNN switched off, so ATen's own CPU
convolutions run instead of oneDNN's: the same math in another fp32 summation order. KSampler on it against KSampler
on the model as loaded measures, in the same run, how far two fp32 orders of ComfyUI's own computation drift apart
through a given sampler run: the yardstick of ``tests/test_ksampler_parity.py``'s server tier.
"""

import ctypes
import gc
import json

import torch


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def mallinfo2() -> dict:
    """glibc's heap statistics (glibc ≥ 2.33), in bytes; {} elsewhere."""
    try:
        function = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return {}
    function.restype = _MallInfo2
    info = function()
    return {name: getattr(info, name) for name in ("arena", "hblkhd", "uordblks", "fordblks", "keepcost")}


class AltDiffusionTestProbe:
    """Counts, in this process: the engine's loaded models and modules (none should outlive a load inside ComfyUI),
    ComfyUI's own models (``BaseModel``, ``AltDiffusionClipModel``, ``AutoencoderKL``), ModelPatchers, ComfyUI's loaded
    models, the UNets' weight bytes, uncollectable garbage, and glibc's heap statistics (``malloc_*``)."""

    CATEGORY = "testing"
    FUNCTION = "probe"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "nonce": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1}),
                "collect": ("BOOLEAN", {"default": True, "tooltip": "gc.collect() first (off: see what garbage holds)"}),
            }
        }

    def probe(self, nonce, collect):
        import comfy.model_management

        if collect:
            gc.collect()
        counts = {"pack_models": 0, "UNet2DConditionModel": 0, "AutoencoderKL": 0, "XLMRobertaWithHead": 0,
                  "ModelPatcher": 0, "BaseModel": 0, "AltDiffusionClipModel": 0}  # fmt: skip
        unets = []
        for obj in gc.get_objects():
            kind = type(obj)
            if kind.__name__ == "LoadedModel" and "altdiff_core" in kind.__module__:
                counts["pack_models"] += 1
            elif kind.__name__ in counts:
                counts[kind.__name__] += 1
                if kind.__name__ in ("UNet2DConditionModel", "BaseModel"):
                    unets.append(obj)
        counts["unet_weight_bytes"] = sum(t.nbytes for u in unets for t in (*u.parameters(), *u.buffers()))
        counts["comfy_loaded_models"] = len(comfy.model_management.current_loaded_models)
        counts["gc_garbage"] = len(gc.garbage)
        counts.update({f"malloc_{k}": v for k, v in mallinfo2().items()})
        return {"ui": {"text": [json.dumps(counts)]}}


class TestModelInOtherOrder:
    CATEGORY = "testing"
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL",)
    DESCRIPTION = "Test only: the model with every UNet call computed with oneDNN off (another fp32 summation order)."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}}

    def apply(self, model):
        reordered = model.clone()

        def without_onednn(apply_model, args):
            with torch.backends.mkldnn.flags(enabled=False):
                return apply_model(args["input"], args["timestep"], **args["c"])

        reordered.set_model_unet_function_wrapper(without_onednn)
        return (reordered,)


NODE_CLASS_MAPPINGS = {"AltDiffusionTestProbe": AltDiffusionTestProbe, "TestModelInOtherOrder": TestModelInOtherOrder}
