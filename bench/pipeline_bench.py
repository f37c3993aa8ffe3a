"""End-to-end benchmark: our nodes vs diffusers' AltDiffusion pipeline vs ComfyUI's own path, same model, equal work.

A full-size random AltDiffusion-m9 (XLM-R large + projection, SD1 UNet, SD VAE: 1.50 B parameters) is written once,
as fp16 safetensors in the BAAI folder layout, into ``--cache`` (default ``$ALTDIFF_BENCH_MODELS``, else
``bench/cache/models``), with the single UNet and VAE files ComfyUI's ``UNETLoader`` / ``VAELoader`` read (the same
weights; the UNet file is ``bench/native_bench.py``'s when that exists, hard-linked). Peers, each run in a fresh process:

- **ours**: the pack's node classes in plain Python (Loader → Text Encode ×2 → Sampler → VAE Decode; VAE Encode →
  Sampler → VAE Decode for img2img);
- **diffusers_77** (like for like) and **diffusers** (its default): ``AltDiffusionPipeline`` /
  ``AltDiffusionImg2ImgPipeline`` assembled from the folder's components (``from_pretrained`` of each; the pipeline
  itself can't load the Hub folder), run the reference way. diffusers pads prompts to the tokenizer's
  ``model_max_length``, 512 in the m9 config, so every UNet step of **diffusers** cross-attends 512 tokens (the floor
  below counts what that adds); **diffusers_77** sets it to 77, the length ours (and ComfyUI) encode to;
- **comfyui_native**: a real ComfyUI 0.3.75 server (``tests/comfy_server.py``) running ComfyUI's own types:
  ``AltDiffusionCheckpointLoader`` (MODEL, CLIP, VAE) → stock ``CLIPTextEncode`` ×2 → ``KSampler`` → ``VAEDecode``;
- **comfyui_unetloader**: another fresh server with no pack loader in its graph: ``UNETLoader`` + ``VAELoader`` →
  ``KSampler`` → ``VAEDecode``, conditioned by ``bench/native_bench.py``'s ``NativeBenchConditioning`` (a fixed random
  ``[1, 77, 768]``: ComfyUI has no XLM-R of its own). Its graph holds no text encoder, so its load and memory are of two
  models where the others hold three (the report says so next to those ratios); its encode is not measured.
  (``comfyui_unetloader_sdpa``, on request: the same, started with ``--use-pytorch-cross-attention``, the SDPA
  attention the native MODEL picks on a CPU where ComfyUI's default is its sub-quadratic one.)

Both server graphs also run img2img (``VAEEncode`` → ``KSampler`` at denoise 0.5 → ``VAEDecode``). Settings: txt2img
256×256, 4 steps, cfg 7.5, DPM++ 2M (Karras sigmas); img2img at denoise 0.5 (the same number of UNet steps on every
side). Per stage: load, text encode (first and warm), seconds per step (the gaps between consecutive step reports,
``steps − 1`` of them, on every side, as ComfyUI's progress events give; the first step, which pays for warm-up, is
``first_step_s``), decode, img2img, end to end (2 encodes + sampling + decode); peak RSS and peak − base RSS (base:
after imports, before loading; a server's imports are ComfyUI's) and on CUDA peak VRAM. On CUDA every timer waits for
the GPU (``torch.cuda.synchronize``) first. Before every run the model's files are read once, so each load starts from
a warm page cache.

Two sections, each its own rounds (every peer once per round, round robin, then the floor):

- **equal dtype** (``--dtype``, default fp32): every peer at that dtype (ComfyUI's ``UNETLoader`` with ``--fp32-unet
  --fp32-vae``);
- **default**: every peer as its users get it: ours and the native loader ``auto`` (fp16 on CUDA, bf16 on a CPU with
  AVX512-BF16 or AMX, else fp32), diffusers' ``from_pretrained`` default (fp32), ComfyUI's own default for ``UNETLoader``
  (fp32 on a CPU). Also the max abs pixel difference of our default image from our equal-dtype one.

Every ratio (a/b, below 1 = a faster or leaner) is given per round, as the median over rounds and as min–max; a ratio
whose rounds straddle 1 is marked "≈" (equal within noise), not a win. The floor: FLOPs of one UNet call (torch's
``FlopCounterMode``; CFG batch 2, the run's latent size, 77 tokens, and with the tokenizer's default length), attention
included (CPU SDPA, ``aten._scaled_dot_product_flash_attention_for_cpu``, has no formula in torch: counted here as
``4·B·H·Lq·Lk·D``), over the matrix-multiply rate measured in the same round and dtype (2048² on the CPU, the faster
of ``torch.mm`` and oneDNN's linear on this machine; on CUDA 8192², after a warm-up). The report's header names the
CPU (model, core count, AVX512-BF16/AMX) and GPU each figure comes from, and the CPU kernels the pack uses on it.

Usage (in the test venv, from the pack's folder)::

    python bench/pipeline_bench.py                     # CPU: equal dtype (fp32) and default sections, 3 rounds each
    python bench/pipeline_bench.py --size 64 --steps 2 --repeats 1 --peers ours,diffusers_77   # a smoke run
    python bench/pipeline_bench.py --device cuda --dtype fp16 --size 512 --steps 20 --peers ours,diffusers_77,diffusers

Results: stdout and ``pipeline_<device>_<dtype>.json`` / ``.md`` in ``--results`` (default ``bench/results``), rewritten
after each run so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from native_bench import UNET_FILE, _dtype_of, _gaps, _median, loaded_as, machine, serve, server_peer, status_mb

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("ALTDIFF_BENCH_MODELS", ROOT / "bench" / "cache" / "models"))
RESULTS = ROOT / "bench" / "results"
MODEL = "AltDiffusion-m9-full-fp16"
PROMPT = "一只戴着红色围巾的橘猫坐在雪地里，油画风格"
NEGATIVE = "模糊, 低质量"
SEED = 42
CFG = 7.5
SAMPLER, SCHEDULER = "dpmpp_2m", "karras"
IMG2IMG_DENOISE = 0.5
TOKENS = 77
"""The prompt length ours and ComfyUI encode to, and diffusers_77's."""
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
NAN = float("nan")

WORKER_PEERS = {"ours": "ours", "diffusers": "diffusers", "diffusers_77": "diffusers"}
"""Peers run as a worker of this file (a fresh Python process): peer → worker."""
SERVER_PEERS = {"comfyui_native": "native", "comfyui_unetloader": "unetloader", "comfyui_unetloader_sdpa": "unetloader_sdpa"}
SERVER_DTYPE_FLAGS = {
    "fp32": ["--fp32-unet", "--fp32-vae"],
    "fp16": ["--fp16-unet", "--fp16-vae"],
    "bf16": ["--bf16-unet", "--bf16-vae"],
    "auto": [],
}
"""ComfyUI's flags that make ``UNETLoader`` and ``VAELoader`` load in a dtype (the native loader takes it as an input)."""
"""Peers run in a fresh ComfyUI server: peer → ``native_bench.server_peer``'s graph."""
PEERS = (*WORKER_PEERS, *SERVER_PEERS)
DEFAULT_PEERS = "ours,diffusers_77,diffusers,comfyui_native,comfyui_unetloader"
DEFAULT_DTYPES = {"ours": "auto", "diffusers": "fp32", "diffusers_77": "fp32", "comfyui_native": "auto",
                  "comfyui_unetloader": "auto", "comfyui_unetloader_sdpa": "auto", "floor": "auto"}  # fmt: skip
"""The default section's dtype per peer: "auto" is the pack's choice (ComfyUI's own on a UNETLoader server: no dtype
flag); diffusers' default is fp32, its ``from_pretrained`` default. (Asked for explicitly: transformers 5 loads a text
encoder without a dtype in its file's dtype, fp16 here, and the pipeline then fails on fp16 prompts into an fp32 UNet.)"""
TEXT_ENCODER_LESS = ("comfyui_unetloader", "comfyui_unetloader_sdpa")
RATIOS = (
    ("ours", "diffusers_77", "like for like, 77 tokens on both sides"),
    ("ours", "diffusers", "diffusers' default: every UNet step cross-attends 512 tokens"),
    ("ours", "comfyui_native", "ComfyUI's own nodes on the native loader's MODEL/CLIP/VAE"),
    ("ours", "comfyui_unetloader", "stock UNETLoader + KSampler; no text encoder in its graph"),
    ("ours", "comfyui_unetloader_sdpa", "as above, ComfyUI on SDPA attention"),
    ("comfyui_native", "comfyui_unetloader", "the native loader against ComfyUI's own"),
)
"""(a, b, what the pair compares): the a/b ratios the report gives, where both peers ran."""
METRICS = {
    "load_s": "load s", "encode_s": "encode s", "encode_warm_s": "encode, warm s", "first_step_s": "first step s",
    "step_s": "s/step", "decode_s": "decode s", "img2img_s": "img2img s", "e2e_s": "end to end s",
    "peak_rss_mb": "peak RSS MiB", "added_mb": "peak − base MiB", "peak_vram_mb": "peak VRAM MiB",
}  # fmt: skip
UNEQUAL = {"load_s", "peak_rss_mb", "added_mb"}
"""Metrics that compare three models against two where one side is a UNETLoader server (no text encoder)."""

logger = logging.getLogger("pipeline_bench")


# ----------------------------------------------------------------------------------------------- the model


def model_files(cache: Path) -> tuple[Path, Path]:
    """The single UNet and VAE files ComfyUI's ``UNETLoader`` / ``VAELoader`` read."""
    return cache / "diffusion_models" / f"{MODEL}-unet.safetensors", cache / "vae" / f"{MODEL}-vae.safetensors"


def ensure_model(cache: Path) -> Path:
    """Write the full-size random m9 folder (fp16) and the single UNet / VAE files ComfyUI's loaders read into
    `cache`, once; returns the folder."""
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from factories import write_altdiffusion_folder, write_component_file

    folder = cache / "altdiffusion" / MODEL
    unet, vae = model_files(cache)
    # native_bench's UNet file holds the same weights (same factory, family, seed and dtype): linked, not built again.
    shared = cache / "unets" / UNET_FILE
    if not unet.is_file() and shared.is_file():
        unet.parent.mkdir(parents=True, exist_ok=True)
        os.link(shared, unet)
    # The UNet file first: the folder's UNet has the same weights (same seed and config), so the folder links to it
    # instead of building the 860 M-parameter UNet a second time.
    for path, component in ((unet, "unet"), (vae, "vae")):
        if not path.is_file():
            logger.info("writing the full-size random %s (fp16) into %s", component, path)
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".tmp")  # renamed when complete: a killed run leaves no half file behind
            write_component_file(partial, component, family="sd1", size="full", seed=0, dtype=torch.float16)
            partial.rename(path)
    if not (folder / "vae" / "diffusion_pytorch_model.safetensors").is_file():
        logger.info("writing the full-size random m9 (fp16) into %s (about a minute)", folder)
        write_altdiffusion_folder(folder, "m9", size="full", dtype=torch.float16, seed=0, unet_file=unet)
    return folder


def default_tokens(folder: Path) -> int:
    """The prompt length diffusers pads to: the tokenizer config's ``model_max_length`` (512 for m9)."""
    return int(json.loads((folder / "tokenizer" / "tokenizer_config.json").read_text())["model_max_length"])


# ----------------------------------------------------------------------------------------------- workers (subprocesses)


def _sync(device: str) -> None:
    """Wait for queued GPU work, so a timestamp taken next counts it (CUDA runs asynchronously)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _memory(device: str, base_mb: float) -> dict:
    """Peak RSS (``VmHWM``) and the base taken after imports; on CUDA the most memory tensors held at once."""
    out = {"peak_rss_mb": status_mb()["VmHWM"], "base_rss_mb": base_mb}
    if device.startswith("cuda"):
        import torch

        out["peak_vram_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _steps(start: float, stamps: list[float]) -> dict:
    """``step_s_each``: the gaps between consecutive step reports (ComfyUI's progress events give only these);
    ``first_step_s``: from the sampler's start to the first report (first use of the weights, kernel warm-up)."""
    return {"step_s_each": _gaps(stamps), "first_step_s": stamps[0] - start if stamps else NAN}


def worker_ours(args) -> dict:
    import numpy as np
    import torch

    runpy.run_path(str(ROOT / "__main__.py"), run_name="bootstrap")["load_pack"](ROOT)
    from comfyui_altdiffusion.nodes import comfy_seam, loader, sampler, text_encode, vae

    base = status_mb()["VmRSS"]
    stamps: list[float] = []
    plain_callback = comfy_seam.step_callback

    def timed_callback(total, device):
        inner = plain_callback(total, device)

        def callback(step, steps, x, denoised):
            _sync(args.device)
            stamps.append(time.perf_counter())
            inner(step, steps, x, denoised)

        return callback

    comfy_seam.step_callback = timed_callback
    t = time.perf_counter()
    model, te, v, info = loader.AltDiffusionLoader.load_path(Path(args.model), args.dtype)
    _sync(args.device)
    load = time.perf_counter() - t
    enc = text_encode.AltDiffusionTextEncode()
    t = time.perf_counter()
    (pos,) = enc.encode(PROMPT, te)
    (neg,) = enc.encode(NEGATIVE, te)
    _sync(args.device)
    encode = (time.perf_counter() - t) / 2
    t = time.perf_counter()
    enc.encode(PROMPT, te), enc.encode(NEGATIVE, te)
    _sync(args.device)
    encode_warm = (time.perf_counter() - t) / 2  # the first calls above also paid for kernel warm-up
    latent = {"samples": torch.zeros(1, 4, args.size // 8, args.size // 8)}
    stamps.clear()
    start = time.perf_counter()
    (out,) = sampler.AltDiffusionSampler().sample(model, SEED, args.steps, CFG, SAMPLER, SCHEDULER, pos, neg, latent, 1.0)
    _sync(args.device)
    sample_total = time.perf_counter() - start
    steps = _steps(start, stamps)
    t = time.perf_counter()
    (image,) = vae.AltDiffusionVAEDecode().decode(out, v)
    _sync(args.device)
    decode = time.perf_counter() - t
    t = time.perf_counter()
    (init,) = vae.AltDiffusionVAEEncode().encode(image, v)
    (out2,) = sampler.AltDiffusionSampler().sample(
        model, SEED, args.steps, CFG, SAMPLER, SCHEDULER, pos, neg, init, IMG2IMG_DENOISE
    )
    (image2,) = vae.AltDiffusionVAEDecode().decode(out2, v)
    _sync(args.device)
    img2img = time.perf_counter() - t
    if args.image_out:  # a file, not the JSON answer: megabytes of floats have no place in the log
        np.save(args.image_out, image.float().numpy())
    return {
        "load_s": load,
        "encode_s": encode,
        "encode_warm_s": encode_warm,
        **steps,
        "sample_s": sample_total,
        "decode_s": decode,
        "img2img_s": img2img,
        **_memory(args.device, base),
        "prompt_tokens": int(pos[0][0].shape[1]),
        "loaded_as": _dtype_of(info),
    }


def worker_diffusers(args) -> dict:
    import torch
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
    from diffusers.pipelines.deprecated.alt_diffusion.modeling_roberta_series import RobertaSeriesModelWithTransformation
    from diffusers.pipelines.deprecated.alt_diffusion.pipeline_alt_diffusion import AltDiffusionPipeline
    from diffusers.pipelines.deprecated.alt_diffusion.pipeline_alt_diffusion_img2img import AltDiffusionImg2ImgPipeline
    from transformers import XLMRobertaTokenizer

    base = status_mb()["VmRSS"]
    dtype = getattr(torch, DTYPES[args.dtype])
    folder = Path(args.model)
    t = time.perf_counter()
    text_encoder = RobertaSeriesModelWithTransformation.from_pretrained(folder / "text_encoder", dtype=dtype)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype)
    tokenizer = XLMRobertaTokenizer.from_pretrained(folder / "tokenizer")
    if args.tokens:  # diffusers pads every prompt to this length, and the UNet cross-attends all of it
        tokenizer.model_max_length = args.tokens
    # DPM++ 2M with Karras sigmas: the same solver as ours ("dpmpp_2m" + "karras").
    scheduler = DPMSolverMultistepScheduler.from_pretrained(folder, subfolder="scheduler", use_karras_sigmas=True)
    parts = dict(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe = AltDiffusionPipeline(**parts).to(args.device)
    _sync(args.device)
    load = time.perf_counter() - t
    t = time.perf_counter()
    with torch.no_grad():
        pos, neg = pipe.encode_prompt(PROMPT, args.device, 1, True, NEGATIVE)
    _sync(args.device)
    encode = (time.perf_counter() - t) / 2
    t = time.perf_counter()
    with torch.no_grad():
        pipe.encode_prompt(PROMPT, args.device, 1, True, NEGATIVE)
    _sync(args.device)
    encode_warm = (time.perf_counter() - t) / 2
    stamps: list[float] = []

    def on_step(pipeline, i, timestep, kwargs):
        _sync(args.device)
        stamps.append(time.perf_counter())
        return kwargs

    generator = torch.Generator("cpu").manual_seed(SEED)
    start = time.perf_counter()
    latents = pipe(
        prompt_embeds=pos,
        negative_prompt_embeds=neg,
        height=args.size,
        width=args.size,
        num_inference_steps=args.steps,
        guidance_scale=CFG,
        generator=generator,
        output_type="latent",
        callback_on_step_end=on_step,
    ).images
    _sync(args.device)
    sample_total = time.perf_counter() - start
    steps = _steps(start, stamps)
    t = time.perf_counter()
    with torch.no_grad():
        pixels = vae.decode(latents / vae.config.scaling_factor).sample
    _sync(args.device)
    decode = time.perf_counter() - t
    img2img_pipe = AltDiffusionImg2ImgPipeline(**parts).to(args.device)
    t = time.perf_counter()
    img2img_pipe(
        prompt_embeds=pos,
        negative_prompt_embeds=neg,
        image=((pixels + 1) / 2).clamp(0, 1).float(),
        strength=IMG2IMG_DENOISE,
        num_inference_steps=round(args.steps / IMG2IMG_DENOISE),  # strength 0.5 runs the last half: `steps` steps
        guidance_scale=CFG,
        generator=generator,
        output_type="pt",  # a tensor, as ours returns an IMAGE tensor (not PIL images)
    )
    _sync(args.device)
    img2img = time.perf_counter() - t
    return {
        "load_s": load,
        "encode_s": encode,
        "encode_warm_s": encode_warm,
        **steps,
        "sample_s": sample_total,
        "decode_s": decode,
        "img2img_s": img2img,
        **_memory(args.device, base),
        "prompt_tokens": int(pos.shape[1]),
        "loaded_as": f"{unet.dtype} on {args.device}, {int(pos.shape[1])} tokens",
    }


def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of CPU SDPA (``aten._scaled_dot_product_flash_attention_for_cpu``), which torch's FlopCounterMode has no
    formula for: QKᵀ and PV, ``2·B·H·Lq·Lk·D`` each, as torch counts its CUDA SDPA kernels."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _unet_flops(unet, x, tokens: int) -> tuple[int, int]:
    """(all FLOPs, attention's FLOPs) of one UNet call on latents `x` with a ``[batch, tokens, width]`` context."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    ctx = torch.randn(x.shape[0], tokens, unet.config.cross_attention_dim, dtype=x.dtype, device=x.device)
    timesteps = torch.full((x.shape[0],), 500, device=x.device)
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flop}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        unet(x, timesteps, encoder_hidden_states=ctx)
    attention = sum(n for op, n in counter.get_flop_counts()["Global"].items() if "scaled_dot_product" in str(op))
    return counter.get_total_flops(), attention


def matmul_rates(dtype, device: str) -> tuple[int, dict[str, float]]:
    """(n, FLOP/s by product name) of ``n``×``n`` matrix products in ``dtype`` on ``device``, each the best of 5
    timings: ``torch.mm``, and on a CPU oneDNN's linear too. The floor's rate is the faster of them."""
    import torch

    from altdiff_core.cpu_kernels import onednn_linear_op  # the op the pack's CPU linears use, probed as they are

    cuda = device.startswith("cuda")
    # A GPU finishes a 2048² product in microseconds, below what a timer resolves, and its first calls pay for
    # kernel selection and clock ramp-up: there, a larger product, a warm-up, and batches of calls per timing.
    n, calls = (8192, 10) if cuda else (2048, 1)
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    products = {"torch.mm": lambda: torch.mm(a, b)}
    onednn = None if cuda else onednn_linear_op(dtype)
    if onednn is not None:
        # torch's CPU matmul is MKL's; oneDNN's (the op inductor uses) can be faster (2048² fp32 on the 2-core AMD VM:
        # 217 against 161 GFLOP/s). The floor is this machine's limit, so it takes the faster of the two, measured here.
        products["onednn.linear"] = lambda: onednn(a, b, None, "none", [], "")
    rates = {}
    for name, product in products.items():
        try:
            for _ in range(calls if cuda else 1):  # warm-up
                product()
        except RuntimeError as err:  # a dtype oneDNN's linear does not take here
            logger.warning("floor: %s left out (%s)", name, err)
            continue
        best = 0.0
        for _ in range(5):
            _sync(device)
            t = time.perf_counter()
            for _ in range(calls):
                product()
            _sync(device)
            best = max(best, calls * 2 * n**3 / (time.perf_counter() - t))
        rates[name] = best
    return n, rates


def worker_floor(args) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch
    from diffusers import UNet2DConditionModel

    from altdiff_core import resolve_dtype

    dtype = resolve_dtype(args.dtype, torch.device(args.device))
    unet = UNet2DConditionModel.from_pretrained(Path(args.model), subfolder="unet", torch_dtype=dtype).to(args.device)
    side = args.size // 8
    x = torch.randn(2, 4, side, side, dtype=dtype, device=args.device)
    flops, attention = _unet_flops(unet, x, TOKENS)
    padded = default_tokens(Path(args.model))
    flops_padded, attention_padded = _unet_flops(unet, x, padded) if padded != TOKENS else (flops, attention)
    del unet
    n, rates = matmul_rates(dtype, args.device)
    fastest = max(rates, key=rates.get)
    return {
        "dtype": str(dtype),
        "unet_gflop": flops / 1e9,
        "attention_gflop": attention / 1e9,
        "padded_tokens": padded,
        "unet_gflop_padded": flops_padded / 1e9,
        "attention_gflop_padded": attention_padded / 1e9,
        "matmul_n": n,
        "matmul_gflops": rates[fastest] / 1e9,
        "matmul_op": fastest,
        "matmul_gflops_each": {name: rate / 1e9 for name, rate in rates.items()},
        "floor_step_s": flops / rates[fastest],
    }


WORKERS = {"ours": worker_ours, "diffusers": worker_diffusers, "floor": worker_floor}


# ----------------------------------------------------------------------------------------------- server peers


def server_graph(peer: str, dtype: str, args) -> tuple[dict, list[str], dict]:
    """(graph, extra ComfyUI arguments, model folders) of a server peer: ``native_bench``'s graph on this model, with
    this benchmark's sampler, then ``VAEDecode`` and img2img (``VAEEncode`` → ``KSampler`` → ``VAEDecode``)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from graphs import ksampler, node, vae_decode, vae_encode, vae_loader

    unet, vae_file = model_files(args.cache)
    where = argparse.Namespace(size=args.size, steps=args.steps, folder=args.model, unet=unet)
    graph, extra, paths = server_peer(SERVER_PEERS[peer], "fp32" if dtype == "fp32" else "auto", where)
    if SERVER_PEERS[peer] != "native":  # UNETLoader and VAELoader take the dtype from ComfyUI's flags ("auto": its own)
        extra = [flag for flag in extra if flag not in SERVER_DTYPE_FLAGS["fp32"]] + SERVER_DTYPE_FLAGS[dtype]
    if SERVER_PEERS[peer] == "native":
        graph["L"]["inputs"]["model_name"] = MODEL
        graph["L"]["inputs"]["dtype"] = dtype
        graph["P"]["inputs"]["text"], graph["N"]["inputs"]["text"] = PROMPT, NEGATIVE
        vae = ("L", 2)
    else:
        graph["L"]["inputs"]["unet_name"] = unet.name
        graph["V"] = vae_loader(vae_file.name)
        paths["vae"] = [vae_file.parent]
        vae = ("V", 0)
    del graph["S"]  # native_bench's SaveLatent
    settings = {"seed": SEED, "steps": args.steps, "cfg": CFG, "sampler_name": SAMPLER, "scheduler": SCHEDULER, "denoise": 1.0}
    graph |= {
        "K": ksampler(("L", 0), ("P", 0), ("N", 0), ("E", 0), **settings),  # in native_bench's place: this bench's settings
        "D": vae_decode(("K", 0), vae),
        "I": vae_encode(("D", 0), vae),
        "K2": ksampler(("L", 0), ("P", 0), ("N", 0), ("I", 0), **(settings | {"denoise": IMG2IMG_DENOISE})),
        "D2": vae_decode(("K2", 0), vae),
        "S": node("PreviewImage", images=("D2", 0)),
    }
    return graph, extra, paths


def run_server(peer: str, dtype: str, args) -> dict:
    graph, extra, paths = server_graph(peer, dtype, args)
    served = serve(graph, extra, paths, ROOT, f"{peer} ({dtype})", cpu=args.device == "cpu")
    spans = served["spans"]

    def span(*nodes: str) -> float:
        return sum(spans[n][1] - spans[n][0] for n in nodes) if all(len(spans.get(n, ())) == 2 for n in nodes) else NAN

    native = SERVER_PEERS[peer] == "native"
    return {
        # the native loader loads all three models; UNETLoader's graph loads the UNet and (VAELoader) the VAE only
        "load_s": span("L") if native else span("L", "V"),
        "encode_s": span("P", "N") / 2 if native else NAN,  # no text encoder on a UNETLoader server
        **_steps(spans["K"][0], served["progress"].get("K", [])),
        "sample_s": span("K"),
        "decode_s": span("D"),
        "img2img_s": span("I", "K2", "D2"),
        "peak_rss_mb": served["status"]["VmHWM"],
        "base_rss_mb": served["base_rss_mb"],
        "startup_s": served["startup_s"],
        "loaded_as": "; ".join(dict.fromkeys(_dtype_of(line) for line in loaded_as(served["log"]))),
    }


# ----------------------------------------------------------------------------------------------- driver


def run_worker(kind: str, args, dtype: str, tokens: int = 0, image_out: Path | None = None) -> dict:
    command = [sys.executable, __file__, "--worker", kind, "--model", str(args.model), "--dtype", dtype, "--size",
               str(args.size), "--steps", str(args.steps), "--device", args.device, "--cache", str(args.cache),
               "--tokens", str(tokens)]  # fmt: skip
    if image_out is not None:
        command += ["--image-out", str(image_out)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=os.environ.copy())
    if done.returncode != 0:
        raise RuntimeError(f"{kind} worker ({dtype}) failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_peer(peer: str, args, dtype: str, image_out: Path | None = None) -> dict:
    """One run of `peer` from a warm page cache, with the derived figures (s/step, end to end, peak − base)."""
    # Every load starts from a warm page cache. Without this a load could find part of the files pushed out of it and
    # time the disk instead: by whatever ran before the benchmark (ours 42.8 s in round 1, 3.5 s in round 2) or by
    # the ComfyUI peer (12 GB resident on the 24 GB VM) just before ours (9.4 s against 1.6 s minutes later).
    from load_bench import warm_page_cache  # bench/ is this script's folder, so on sys.path

    warm_page_cache(args.model, *model_files(args.cache))
    logger.info("running %s (%s)", peer, dtype)
    started = time.perf_counter()
    if peer in SERVER_PEERS:
        result = run_server(peer, dtype, args)
    elif peer == "floor":
        return run_worker("floor", args, dtype)
    else:
        tokens = TOKENS if peer == "diffusers_77" else 0
        result = run_worker(WORKER_PEERS[peer], args, dtype, tokens, image_out if peer == "ours" else None)
    result["wall_s"] = time.perf_counter() - started
    result["load_avg"] = os.getloadavg()[0]
    result["step_s"] = _median(result["step_s_each"])
    result["e2e_s"] = 2 * result["encode_s"] + result["sample_s"] + result["decode_s"]  # NaN where nothing encodes
    result["added_mb"] = result["peak_rss_mb"] - result["base_rss_mb"]
    logger.info("%s (%s): %s", peer, dtype, {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()})
    return result


def ratio(runs: dict, a: str, b: str, key: str) -> dict | None:
    """a/b of `key` per round (rounds where both measured it), their median and range; ``noise``: the rounds straddle
    1, so the ratio is equal within noise."""
    each = [x[key] / y[key] for x, y in zip(runs.get(a, []), runs.get(b, []), strict=False)
            if x.get(key, NAN) == x.get(key, NAN) and y.get(key, NAN) == y.get(key, NAN) and y[key]]  # fmt: skip
    if not each:
        return None
    return {"median": statistics.median(each), "rounds": each, "min": min(each), "max": max(each),
            "noise": min(each) < 1 < max(each)}  # fmt: skip


def section_ratios(runs: dict) -> dict:
    return {
        f"{a}/{b}": {k: r for k in METRICS if (r := ratio(runs, a, b, k))} for a, b, _ in RATIOS if runs.get(a) and runs.get(b)
    }


def _fmt(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if value == value else "–"


def _ratio_cell(r: dict | None) -> str:
    if r is None:
        return "–"
    if len(r["rounds"]) == 1:
        return _fmt(r["median"])
    return f"{_fmt(r['median'])} ({_fmt(r['min'])}–{_fmt(r['max'])})" + (" ≈" if r["noise"] else "")


def _spread_cell(values: list[float], digits: int) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "–"
    middle = _fmt(statistics.median(values), digits)
    return middle if len(values) == 1 else f"{middle} ({_fmt(min(values), digits)}–{_fmt(max(values), digits)})"


def _header(report: dict) -> list[str]:
    m = report["machine"]
    bf16 = ", ".join(m["bf16_flags"]) or "none"
    gpu = f"; GPU {m['gpu']}" if m.get("gpu") else ""
    return [
        f"# Pipeline benchmark — {m['cpu']}, {m['cpus']} CPUs (bf16 instructions: {bf16}){gpu}"
        + (f"; ISA capped: {', '.join(f'{k}={v}' for k, v in m['isa_caps'].items())}" if m.get("isa_caps") else ""),
        "",
        f"{m['date']}, {m['platform']}, torch {m['torch']}, diffusers {m['diffusers']}, ComfyUI 0.3.75; device "
        f"{report['device']}; load average {report['load_before']} before, {report.get('load_after', '…')} after. "
        f"Model: full-size random AltDiffusion-m9 (fp16 files). txt2img {report['size']}², {report['steps']} steps, "
        f"cfg {CFG}, DPM++ 2M Karras; img2img denoise {IMG2IMG_DENOISE}; rounds per section: {report['repeats']}, round "
        f"robin, every run a fresh process from a warm page cache. auto = {report['auto']} here. CPU kernels the pack "
        f"uses on this machine: {report['cpu_kernels']}.",
        "",
        "Ratios a/b: median over rounds (min–max); below 1 = a faster or leaner; **≈** = the rounds straddle 1: equal "
        "within noise, not a win. s/step: gaps between step reports (steps − 1 per run, the same on every side).",
    ]  # fmt: skip


def _floor_line(floor_runs: list[dict], ours: list[dict]) -> str:
    f = floor_runs[-1]
    added = f["unet_gflop_padded"] / f["unet_gflop"] - 1
    each = ", ".join(f"{name} {rate:.0f}" for name, rate in f["matmul_gflops_each"].items())
    over = [o["step_s"] / fl["floor_step_s"] for o, fl in zip(ours, floor_runs, strict=False) if o["step_s"] == o["step_s"]]
    line = (
        f"Floor ({f['dtype']}): one UNet call (CFG batch 2, {TOKENS} tokens) {f['unet_gflop']:.4g} GFLOP, attention "
        f"(QKᵀ and PV; CPU SDPA counted as 4·B·H·Lq·Lk·D) {f['attention_gflop']:.3g} GFLOP of it "
        f"({f['attention_gflop'] / f['unet_gflop']:.1%}); with diffusers' default {f['padded_tokens']} tokens "
        f"{f['unet_gflop_padded']:.4g} GFLOP (+{added:.1%}; attention {f['attention_gflop_padded']:.3g}). Matmul "
        f"{f['matmul_n']}² {_spread_cell([r['matmul_gflops'] for r in floor_runs], 0)} GFLOP/s (the faster of: {each}); "
        f"floor {_spread_cell([r['floor_step_s'] for r in floor_runs], 3)} s/step."
    )
    if over:
        line += f" ours/floor {_spread_cell(over, 2)}; per round {', '.join(_fmt(v) for v in over)}."
    return line


def markdown(report: dict) -> str:
    """The report as markdown; parts not measured yet (a run still going, or cut short) are left out."""
    lines = _header(report)
    for section in report["sections"].values():
        runs = {peer: done for peer, done in section["runs"].items() if done}
        peers = [p for p in runs if p != "floor"]
        if not peers:
            continue
        dtypes = ", ".join(f"{p} {section['dtypes'][p]}" for p in peers)
        lines += ["", f"## {section['title']}", "", f"dtypes: {dtypes}.", ""]
        ratios = section_ratios(runs)
        columns = [k for k in METRICS if any(k in r for r in ratios.values())]
        headline = ratios.get("ours/diffusers_77", {})
        if headline:  # the like-for-like pair; ours/diffusers (512 tokens) is named as diffusers' default below
            figures = ", ".join(f"{METRICS[k]} {_ratio_cell(headline.get(k))}" for k in ("step_s", "e2e_s", "peak_rss_mb"))
            lines += [f"**Like for like, ours/diffusers_77**: {figures}.", ""]
        if ratios:
            lines += ["| ratio | " + " | ".join(METRICS[k] for k in columns) + " |", "|---|" + "---|" * len(columns)]
            lines += [f"| {pair} | " + " | ".join(_ratio_cell(rs.get(k)) for k in columns) + " |" for pair, rs in ratios.items()]
            lines.append("")
        for a, b, what in RATIOS:
            rs = ratios.get(f"{a}/{b}")
            if rs:
                unequal = " Load and memory: three models against two (no text encoder there)." if b in TEXT_ENCODER_LESS else ""
                per_round = "; ".join(f"{METRICS[k]} {', '.join(_fmt(v) for v in r['rounds'])}" for k, r in rs.items())
                lines.append(f"- {a}/{b} ({what}).{unequal} Per round: {per_round}.")
        columns = [k for k in METRICS if any(k in r for done in runs.values() for r in done)]
        lines += [
            "",
            "| peer | loaded as | " + " | ".join(METRICS[k] for k in columns) + " |",
            "|---|---|" + "---|" * len(columns),
        ]
        for peer in peers:
            done = runs[peer]
            digits = {k: 0 if k.endswith("_mb") else 3 for k in columns}
            cells = [_spread_cell([r.get(k, NAN) for r in done], digits[k]) for k in columns]
            lines.append(f"| {peer} | {done[0].get('loaded_as', '')} | " + " | ".join(cells) + " |")
        if runs.get("floor"):
            lines += ["", _floor_line(runs["floor"], runs.get("ours", []))]
    if report.get("drift") is not None:
        lines += ["", f"Our default-dtype image against our equal-dtype one: max abs pixel difference {report['drift']:.4f}."]
    if report.get("note"):
        lines += ["", report["note"]]
    return "\n".join(lines) + "\n"


def save(report: dict, stem: Path) -> None:
    """Write the report so far as ``stem.json`` and ``stem.md``; called after each run, so a run that is stopped
    (a time limit, a failing peer) still leaves what it measured."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    stem.with_suffix(".md").write_text(markdown(report), encoding="utf-8")


def describe_machine(device: str) -> tuple[dict, str, str]:
    """(the machine: CPU model, cores, bf16 flags, … and the GPU on CUDA; what "auto" resolves to; the CPU kernels the
    pack uses here)."""
    sys.path.insert(0, str(ROOT))
    import diffusers
    import torch

    from altdiff_core import cpu_kernels, resolve_dtype

    caps = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")  # how CI makes a CPU compute as AVX2
    info = machine() | {"diffusers": diffusers.__version__, "isa_caps": {k: os.environ[k] for k in caps if k in os.environ}}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    ops = [str(d).removeprefix("torch.") for d in cpu_kernels.ONEDNN_DTYPES if cpu_kernels.onednn_is_faster(d)]
    kernels = (f"oneDNN linears in {', '.join(ops) or 'no dtype (F.linear)'} (this machine's probe); 3×3 convolutions "
               f"as one matmul at ≥ {cpu_kernels.MIN_CHANNELS} input channels and ≤ {cpu_kernels.MAX_PIXELS} pixels "
               "(fixed thresholds; there the matmul form took 0.14–0.54× oneDNN's convolution's time, 0.26–0.66× "
               "under AVX2 caps)")  # fmt: skip
    return info, str(resolve_dtype("auto", torch.device(device))).removeprefix("torch."), kernels


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--image-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="fp32", help="the equal-dtype section's dtype for every peer: fp32, fp16, bf16")
    parser.add_argument("--sections", default="equal,default", help="comma-separated: equal (--dtype everywhere), "
                        "default (each peer's own default dtype)")  # fmt: skip
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="rounds per section")
    parser.add_argument("--peers", default=DEFAULT_PEERS, help=f"comma-separated, of {', '.join(PEERS)}")
    parser.add_argument("--cache", type=Path, default=CACHE, help="model folder (default $ALTDIFF_BENCH_MODELS, else "
                        "bench/cache/models); the random model is written there on first use")  # fmt: skip
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the .json / .md report goes")
    parser.add_argument("--note", default="", help="a line appended to the markdown report (e.g. a peer not run)")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))  # noqa: T201 - the worker's answer to the driver, on stdout
        return 0
    peers, sections = args.peers.split(","), args.sections.split(",")
    if unknown := set(peers) - set(PEERS):
        parser.error(f"unknown peers {sorted(unknown)}; choose from {', '.join(PEERS)}")
    if unknown := set(sections) - {"equal", "default"}:
        parser.error(f"unknown sections {sorted(unknown)}; choose from equal, default")
    if args.dtype not in DTYPES:
        parser.error(f"--dtype {args.dtype!r}: the equal-dtype section takes one of {', '.join(DTYPES)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.model = ensure_model(args.cache)
    info, auto, kernels = describe_machine(args.device)
    report = {
        "machine": info, "device": args.device, "auto": auto, "cpu_kernels": kernels, "size": args.size,
        "steps": args.steps, "repeats": args.repeats, "note": args.note,
        "load_before": " ".join(f"{v:.2f}" for v in os.getloadavg()), "sections": {}, "drift": None,
    }  # fmt: skip
    titles = {"equal": f"Equal dtype: {args.dtype} for every peer",
              "default": "Default dtypes: each peer as its users get it (ours and the native loader auto, diffusers "
                         "fp32, ComfyUI's UNETLoader its own choice)"}  # fmt: skip
    for name in sections:
        dtypes = {peer: args.dtype if name == "equal" else DEFAULT_DTYPES[peer] for peer in [*peers, "floor"]}
        report["sections"][name] = {"title": titles[name], "dtypes": dtypes, "runs": {peer: [] for peer in dtypes}}
    stem = args.results / f"pipeline_{args.device}_{args.dtype}"
    with tempfile.TemporaryDirectory(prefix="pipeline_bench_") as images:
        for name, section in report["sections"].items():
            for round_ in range(args.repeats):
                # Round robin, not one peer's repeats after another's: a shared machine's speed drifts over minutes
                # (the 2-core VM's s/step moved by 30 % between runs), and each round gives every peer and the floor
                # the same phase. Ratios are then taken round by round.
                for peer, done in section["runs"].items():
                    image = Path(images) / f"{name}.npy" if round_ == 0 else None
                    logger.info("%s, round %d/%d", section["title"], round_ + 1, args.repeats)
                    done.append(run_peer(peer, args, section["dtypes"][peer], image))
                    report["load_after"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
                    save(report, stem)
        files = [Path(images) / f"{name}.npy" for name in ("equal", "default")]
        if "ours" in peers and all(f.is_file() for f in files):
            import numpy as np

            report["drift"] = float(np.abs(np.load(files[1]) - np.load(files[0])).max())
    save(report, stem)
    logger.info("\n%s", markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
