"""Test-only ComfyUI nodes, copied into the test server's ``custom_nodes`` by ``tests/conftest.py`` (never shipped).

``TestModelInOtherOrder``: the same MODEL computing every UNet call with oneDNN switched off, so ATen's own CPU
convolutions run instead of oneDNN's: the same math in another fp32 summation order. KSampler on it against KSampler
on the model as loaded measures, in the same run, how far two fp32 orders of ComfyUI's own computation drift apart
through a given sampler run: the yardstick of ``tests/test_ksampler_parity.py``'s server tier.
"""

import torch


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


NODE_CLASS_MAPPINGS = {"TestModelInOtherOrder": TestModelInOtherOrder}
