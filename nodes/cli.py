"""The command line (``python . …``): one image from a prompt, through the pack's own node classes."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from ..altdiff_core import SAMPLERS, SCHEDULERS, AltDiffusionError, InvalidInputError, hub_models, resolve_model_name
from . import comfy_seam
from .loader import DTYPE_CHOICES, AltDiffusionLoader, model_folders
from .sampler import AltDiffusionSampler
from .text_encode import AltDiffusionTextEncode
from .vae import AltDiffusionVAEDecode, AltDiffusionVAEEncode

logger = logging.getLogger("altdiffusion")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python .", description="Generate an image with AltDiffusion, no ComfyUI needed.")
    p.add_argument(
        "--model",
        default="BAAI/AltDiffusion-m9",
        help=f"a diffusers folder, a single-file .safetensors/.ckpt, or a Hub id ({', '.join(hub_models())})",
    )
    p.add_argument("--prompt", required=True, help="the prompt, in any of the model's languages")
    p.add_argument("--negative", default="", help="negative prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--cfg", type=float, default=7.5)
    p.add_argument("--width", type=int, default=512, help="multiple of 8 (ignored with --init-image)")
    p.add_argument("--height", type=int, default=512, help="multiple of 8 (ignored with --init-image)")
    p.add_argument("--sampler", default="dpmpp_2m", choices=list(SAMPLERS))
    p.add_argument("--scheduler", default="karras", choices=list(SCHEDULERS))
    p.add_argument("--init-image", type=Path, help="start from this image (img2img)")
    p.add_argument("--denoise", type=float, default=None, help="1.0 for txt2img; default 0.6 with --init-image")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES)
    p.add_argument("--output", type=Path, default=Path("altdiffusion.png"))
    return p


def resolve_model_argument(model: str) -> Path:
    """An existing folder or file as it is; otherwise what the loader node would make of the name (a model under the
    model folders, a Hub id: its folder there, downloaded first when missing; ``altdiff_core.resolve_model_name``)."""
    return resolve_model_name(model, model_folders(), progress=comfy_seam.download_progress, any_path=True)


def load_image(path: Path) -> torch.Tensor:
    """A picture file → IMAGE ``[1,H,W,3]`` float32 0..1."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as err:
        raise InvalidInputError(f"--init-image {path} cannot be read as a picture ({err}).") from err
    return torch.from_numpy(array)[None]


def save_image(image: torch.Tensor, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((image[0].numpy() * 255.0).round().astype(np.uint8)).save(path)


def generate(args: argparse.Namespace) -> Path:
    if args.init_image is None and (args.width % 8 or args.height % 8 or args.width < 8 or args.height < 8):
        raise InvalidInputError(f"--width {args.width} / --height {args.height} must be positive multiples of 8.")
    model, text_encoder, vae, _info = AltDiffusionLoader.load_path(resolve_model_argument(args.model), args.dtype)  # logged
    (positive,) = AltDiffusionTextEncode().encode(args.prompt, text_encoder)
    (negative,) = AltDiffusionTextEncode().encode(args.negative, text_encoder)
    if args.init_image is not None:
        (latent,) = AltDiffusionVAEEncode().encode(load_image(args.init_image), vae)
        denoise = 0.6 if args.denoise is None else args.denoise
    else:
        latent = {"samples": torch.zeros(1, model.latent_channels, args.height // 8, args.width // 8)}
        denoise = 1.0 if args.denoise is None else args.denoise
    (latent,) = AltDiffusionSampler().sample(
        model, args.seed, args.steps, args.cfg, args.sampler, args.scheduler, positive, negative, latent, denoise
    )
    (image,) = AltDiffusionVAEDecode().decode(latent, vae)
    save_image(image, args.output)
    return args.output


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        out = generate(args)
    except AltDiffusionError as err:
        logger.error("%s", err)
        return 2
    logger.info("saved %s", out)
    sys.stdout.flush()
    return 0
