"""ComfyUI's memory manager with our parts on a GPU, in one process: load → run → unload_all_models → run again.

Imports ComfyUI's ``comfy`` package, ``folder_paths`` and ``latent_preview`` from a ComfyUI source folder (so the pack
sees itself inside ComfyUI), loads a tiny random AltDiffusion-m9 with the Loader node, and checks that:

- after the loader, every part sits on ComfyUI's offload device (the CPU) — nothing is put on the GPU before it is used;
- each node moves its part to ComfyUI's torch device through ``load_models_gpu`` (the text encoder, UNet and VAE
  appear in ``current_loaded_models``);
- ``unload_all_models()`` (what ComfyUI does for another model, or for the Unload button) moves them back to the CPU
  and frees their GPU memory, and the next run loads them again and gives the same image.

Usage::

    python bench/comfy_memory_check.py --comfyui .devcarry/comfyui [--out result.json]

Exit status 0 when every check holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import runpy
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

logger = logging.getLogger("comfy_memory_check")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", type=Path, required=True, help="a ComfyUI 0.3.75 source folder")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    sys.path[:0] = [str(args.comfyui), str(ROOT / "tests")]
    import torch
    from comfy.cli_args import args as comfy_args

    comfy_args.cpu = not torch.cuda.is_available()
    import comfy.model_management as mm
    import folder_paths  # noqa: F401 - the pack's seam looks for it
    import latent_preview  # noqa: F401
    from factories import write_altdiffusion_folder

    # The pack loads by path, as ComfyUI loads it (not from sys.path: its own nodes/ package would shadow ComfyUI's
    # nodes.py for the seam's `import nodes`).
    runpy.run_path(str(ROOT / "__main__.py"), run_name="bootstrap")["load_pack"](ROOT)
    from comfyui_altdiffusion.nodes import comfy_seam, loader, sampler, text_encode, vae

    checks: dict[str, bool] = {"inside ComfyUI": comfy_seam.IN_COMFYUI}
    run_on = mm.get_torch_device()
    folder = write_altdiffusion_folder(Path(tempfile.mkdtemp()) / "AltDiffusion-m9", "m9", seed=0)
    model, te, v, info = loader.AltDiffusionLoader.load_path(folder, "fp16" if run_on.type == "cuda" else "fp32")
    logger.info("%s", info)
    # inside ComfyUI the loader hands out ComfyUI's own MODEL, CLIP and VAE; their modules:
    parts = {"text encoder": te.cond_stage_model, "unet": model.model, "vae": v.first_stage_model}
    checks["loaded onto the offload device"] = all(
        p.device == mm.unet_offload_device() for m in parts.values() for p in m.parameters()
    )

    def run() -> torch.Tensor:
        (pos,) = text_encode.AltDiffusionTextEncode().encode("一只猫", te)
        (neg,) = text_encode.AltDiffusionTextEncode().encode("", te)
        latent = {"samples": torch.zeros(1, 4, 8, 8)}
        (out,) = sampler.AltDiffusionSampler().sample(model, 1, 3, 7.5, "euler", "normal", pos, neg, latent, 1.0)
        (image,) = vae.AltDiffusionVAEDecode().decode(out, v)
        return image

    first = run()
    checks["each part on the torch device after use"] = all(p.device == run_on for m in parts.values() for p in m.parameters())
    names = {type(m.model.model).__name__ for m in mm.current_loaded_models if m.model is not None}
    checks["all three in current_loaded_models"] = {"AltDiffusionClipModel", "BaseModel", "AutoencoderKL"} <= names
    used = torch.cuda.memory_allocated() if run_on.type == "cuda" else 0
    mm.unload_all_models()
    mm.soft_empty_cache(True)
    freed = used - (torch.cuda.memory_allocated() if run_on.type == "cuda" else 0)
    checks["unload_all_models moves every part to the CPU"] = all(
        p.device.type == "cpu" for m in parts.values() for p in m.parameters()
    )
    second = run()
    checks["the next run loads them again, same image"] = torch.equal(first, second) and all(
        p.device == run_on for m in parts.values() for p in m.parameters()
    )
    report = {"device": str(run_on), "gpu_bytes_freed_by_unload": freed, "checks": checks}
    logger.info("%s", json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
