"""End-to-end benchmark: our nodes vs diffusers' AltDiffusion pipeline vs ComfyUI's own path, same model, same run.

A full-size random AltDiffusion-m9 (XLM-R large + projection, SD1 UNet, SD VAE: 1.50 B parameters) is written once,
as fp16 safetensors in the BAAI folder layout, into ``--cache`` (default ``$ALTDIFF_BENCH_MODELS``, else
``bench/cache/models``). Then, each peer in fresh subprocesses:

- **ours**: the pack's node classes (Loader → Text Encode ×2 → Sampler → VAE Decode; VAE Encode → Sampler for img2img);
- **diffusers**: ``AltDiffusionPipeline`` / ``AltDiffusionImg2ImgPipeline`` assembled from the folder's components
  (``from_pretrained`` of each; the pipeline itself can't load the Hub folder), run the reference way;
- **comfyui**: a real ComfyUI 0.3.75 server: ``UNETLoader`` + our text encode + ``KSampler`` + ``VAELoader``/``VAEDecode``.

Settings: txt2img 256×256, 4 steps, cfg 7.5, DPM++ 2M (Karras sigmas); img2img at denoise 0.5. Per stage: load, text
encode, seconds per step, decode; peak RSS (and on CUDA peak VRAM, ``torch.cuda.max_memory_allocated``). On CUDA every
stage timer and step timestamp waits for the GPU (``torch.cuda.synchronize``) first. Before every worker the
model's files are read once, so each load starts from a warm page cache. The peers run round-robin, one round after
another; medians over ``--repeats`` rounds; ratios ours/peer. Also the floor: FLOPs of one UNet call (torch's
FlopCounterMode; CFG batch 2, the run's latent size) over the matrix-multiply rate measured in the same rounds in the
same dtype (2048² on the CPU, the faster of ``torch.mm`` and oneDNN's linear; on CUDA 8192², after a warm-up).

Usage (in the test venv, from the pack's folder)::

    python bench/pipeline_bench.py                     # CPU, fp32 for every peer, then ours at the "auto" dtype
    python bench/pipeline_bench.py --device cuda --dtype fp16 --size 512 --steps 20   # a CUDA machine

Results: stdout and ``pipeline_<device>_<dtype>.json`` / ``.md`` in ``--results`` (default ``bench/results``), rewritten
after each peer so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("ALTDIFF_BENCH_MODELS", ROOT / "bench" / "cache" / "models"))
RESULTS = ROOT / "bench" / "results"
MODEL = "AltDiffusion-m9-full-fp16"
PROMPT = "一只戴着红色围巾的橘猫坐在雪地里，油画风格"
NEGATIVE = "模糊, 低质量"
SEED = 42
CFG = 7.5
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}

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


# ----------------------------------------------------------------------------------------------- workers (subprocesses)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: str) -> None:
    """Wait for queued GPU work, so a timestamp taken next counts it (CUDA runs asynchronously)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _peak_vram_mb(device: str) -> dict:
    """``{"peak_vram_mb": …}`` on CUDA (the most memory tensors held at once in this process), else nothing."""
    if not device.startswith("cuda"):
        return {}
    import torch

    return {"peak_vram_mb": torch.cuda.max_memory_allocated() / 2**20}


def _median_step(stamps: list[float]) -> float:
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return statistics.median(gaps) if gaps else float("nan")


def worker_ours(args) -> dict:
    sys.path.insert(0, str(ROOT))
    import runpy

    import torch

    runpy.run_path(str(ROOT / "__main__.py"), run_name="bootstrap")["load_pack"](ROOT)
    from comfyui_altdiffusion.nodes import comfy_seam, loader, sampler, text_encode, vae

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
    start = time.perf_counter()
    stamps.clear()
    (out,) = sampler.AltDiffusionSampler().sample(model, SEED, args.steps, CFG, "dpmpp_2m", "karras", pos, neg, latent, 1.0)
    _sync(args.device)
    sample_total = time.perf_counter() - start
    step = _median_step([start, *stamps])
    t = time.perf_counter()
    (image,) = vae.AltDiffusionVAEDecode().decode(out, v)
    _sync(args.device)
    decode = time.perf_counter() - t
    t = time.perf_counter()
    (init,) = vae.AltDiffusionVAEEncode().encode(image, v)
    stamps.clear()
    (out2,) = sampler.AltDiffusionSampler().sample(model, SEED, args.steps, CFG, "dpmpp_2m", "karras", pos, neg, init, 0.5)
    (image2,) = vae.AltDiffusionVAEDecode().decode(out2, v)
    _sync(args.device)
    img2img = time.perf_counter() - t
    return {
        "load_s": load,
        "encode_s": encode,
        "encode_warm_s": encode_warm,
        "step_s": step,
        "sample_s": sample_total,
        "decode_s": decode,
        "img2img_s": img2img,
        "peak_rss_mb": _peak_rss_mb(),
        **_peak_vram_mb(args.device),
        "info": info,
        "image": image.numpy().tolist() if args.keep_image else None,
    }


def worker_diffusers(args) -> dict:
    import torch
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
    from diffusers.pipelines.deprecated.alt_diffusion.modeling_roberta_series import RobertaSeriesModelWithTransformation
    from diffusers.pipelines.deprecated.alt_diffusion.pipeline_alt_diffusion import AltDiffusionPipeline
    from diffusers.pipelines.deprecated.alt_diffusion.pipeline_alt_diffusion_img2img import AltDiffusionImg2ImgPipeline
    from transformers import XLMRobertaTokenizer

    dtype = getattr(torch, DTYPES[args.dtype])
    folder = Path(args.model)
    t = time.perf_counter()
    text_encoder = RobertaSeriesModelWithTransformation.from_pretrained(folder / "text_encoder", dtype=dtype)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype)
    tokenizer = XLMRobertaTokenizer.from_pretrained(folder / "tokenizer")
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
    step = _median_step([start, *stamps])
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
        strength=0.5,
        num_inference_steps=args.steps * 2,
        guidance_scale=CFG,
        generator=generator,
    )
    _sync(args.device)
    img2img = time.perf_counter() - t
    return {
        "load_s": load,
        "encode_s": encode,
        "encode_warm_s": encode_warm,
        "step_s": step,
        "sample_s": sample_total,
        "decode_s": decode,
        "img2img_s": img2img,
        "peak_rss_mb": _peak_rss_mb(),
        **_peak_vram_mb(args.device),
        "prompt_tokens": int(pos.shape[1]),
    }


def worker_comfyui(args) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from comfy_server import ComfyServer

    unet_name = f"{MODEL}-unet.safetensors"
    vae_name = f"{MODEL}-vae.safetensors"
    graph = {
        "L": {"class_type": "AltDiffusionLoader", "inputs": {"model_name": MODEL, "dtype": args.dtype}},
        "P": {"class_type": "AltDiffusionTextEncode", "inputs": {"text": PROMPT, "text_encoder": ["L", 1]}},
        "N": {"class_type": "AltDiffusionTextEncode", "inputs": {"text": NEGATIVE, "text_encoder": ["L", 1]}},
        "U": {"class_type": "UNETLoader", "inputs": {"unet_name": unet_name, "weight_dtype": "default"}},
        "E": {"class_type": "EmptyLatentImage", "inputs": {"width": args.size, "height": args.size, "batch_size": 1}},
        "K": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["U", 0],
                "seed": SEED,
                "steps": args.steps,
                "cfg": CFG,
                "sampler_name": "dpmpp_2m",
                "scheduler": "karras",
                "positive": ["P", 0],
                "negative": ["N", 0],
                "latent_image": ["E", 0],
                "denoise": 1.0,
            },
        },
        "V": {"class_type": "VAELoader", "inputs": {"vae_name": vae_name}},
        "D": {"class_type": "VAEDecode", "inputs": {"samples": ["K", 0], "vae": ["V", 0]}},
        "S": {"class_type": "PreviewImage", "inputs": {"images": ["D", 0]}},
    }
    paths = {name: [args.cache / name] for name in ("altdiffusion", "diffusion_models", "vae")}
    extra = ("--fp32-unet", "--fp32-vae") if args.dtype == "fp32" else ()
    with tempfile.TemporaryDirectory() as work, ComfyServer(ROOT, Path(work), model_paths=paths, extra_args=extra) as server:
        spans: dict[str, float] = {}
        steps: list[float] = []
        state = {"node": None, "since": None}

        def on_event(event):
            now = time.perf_counter()
            if event["type"] == "executing":
                if state["node"] is not None:
                    spans[state["node"]] = now - state["since"]
                state["node"], state["since"] = event["data"].get("node"), now
            elif event["type"] == "progress" and event["data"].get("node") == "K":
                steps.append(now)

        result = server.run(graph, timeout=3600, on_event=on_event)
        if result.status_str != "success":
            raise RuntimeError(f"ComfyUI run failed: {result.error}")
        peak = _vm_hwm_mb(server.proc.pid)
    return {
        # progress events only arrive after a step: medians use the gaps between them
        "load_s": spans.get("U", float("nan")) + spans.get("V", 0.0),
        "step_s": _median_step(steps),
        "sample_s": spans.get("K"),
        "decode_s": spans.get("D"),
        "encode_s": spans.get("P"),
        "peak_rss_mb": peak,
    }


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker_floor(args) -> dict:
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    dtype = getattr(torch, DTYPES[args.dtype])
    unet = UNet2DConditionModel.from_pretrained(Path(args.model), subfolder="unet", torch_dtype=dtype).to(args.device)
    side = args.size // 8
    x = torch.randn(2, 4, side, side, dtype=dtype, device=args.device)
    ctx = torch.randn(2, 77, 768, dtype=dtype, device=args.device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(x, torch.tensor([500, 500], device=args.device), encoder_hidden_states=ctx)
    flops = counter.get_total_flops()
    cuda = args.device.startswith("cuda")
    # A GPU finishes a 2048² product in microseconds, below what a timer resolves, and its first calls pay for
    # kernel selection and clock ramp-up: there, a larger product, a warm-up, and batches of calls per timing.
    n, calls = (8192, 10) if cuda else (2048, 1)
    a = torch.randn(n, n, dtype=dtype, device=args.device)
    b = torch.randn(n, n, dtype=dtype, device=args.device)
    products = {"torch.mm": lambda: torch.mm(a, b)}
    sys.path.insert(0, str(ROOT))
    from altdiff_core.cpu_kernels import onednn_linear_op  # the op the pack's CPU linears use, probed as they are

    onednn = None if cuda else onednn_linear_op()
    if onednn is not None:
        # torch's CPU matmul is MKL's; oneDNN's (the op inductor uses) was faster on the 2-core AMD VM (2048² fp32: 217
        # against 161 GFLOP/s). The floor is the machine's limit, so it takes the faster of the two.
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
            _sync(args.device)
            t = time.perf_counter()
            for _ in range(calls):
                product()
            _sync(args.device)
            best = max(best, calls * 2 * n**3 / (time.perf_counter() - t))
        rates[name] = best
    fastest = max(rates, key=rates.get)
    return {
        "unet_gflop": flops / 1e9,
        "matmul_n": n,
        "matmul_gflops": rates[fastest] / 1e9,
        "matmul_op": fastest,
        **{f"matmul_gflops[{name}]": rate / 1e9 for name, rate in rates.items()},
        "floor_step_s": flops / rates[fastest],
        **_peak_vram_mb(args.device),
    }


WORKERS = {"ours": worker_ours, "diffusers": worker_diffusers, "comfyui": worker_comfyui, "floor": worker_floor}


# ----------------------------------------------------------------------------------------------- driver


def run_worker(kind: str, args, dtype: str) -> dict:
    # Every load starts from a warm page cache. Without this a load could find part of the files pushed out of it and
    # time the disk instead: by whatever ran before the benchmark (ours 42.8 s in round 1, 3.5 s in round 2) or by
    # the ComfyUI peer (12 GB resident on the 24 GB VM) just before ours (9.4 s against 1.6 s minutes later).
    from load_bench import warm_page_cache  # bench/ is this script's folder, so on sys.path

    warmed = warm_page_cache(args.model, *model_files(args.cache))
    logger.info("page cache warmed with %.2f GiB", warmed / 2**30)
    command = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--model",
        str(args.model),
        "--dtype",
        dtype,
        "--size",
        str(args.size),
        "--steps",
        str(args.steps),
        "--device",
        args.device,
        "--cache",
        str(args.cache),
    ]
    if args.keep_image:
        command.append("--keep-image")
    logger.info("running the %s worker (%s)", kind, dtype)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=os.environ.copy())
    if done.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - started
    logger.info("%s (%s): %s", kind, dtype, {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()})
    return result


def medians(runs: list[dict]) -> dict:
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float))]
    return {k: statistics.median(r[k] for r in runs) for k in keys} | {
        k: v for k, v in runs[0].items() if not isinstance(v, (int, float))
    }


STAGES = ("load_s", "encode_s", "encode_warm_s", "step_s", "decode_s", "img2img_s", "peak_rss_mb")
CUDA_STAGES = ("peak_vram_mb",)  # measured on CUDA only: a column only where some peer has it


def ratios(ours: dict, peer: dict) -> dict:
    return {k: ours[k] / peer[k] for k in STAGES + CUDA_STAGES if k in ours and peer.get(k) and peer[k] == peer[k]}


def markdown(report: dict) -> str:
    """The report as markdown; parts not measured yet (a run still going, or cut short) are left out."""
    results = [entry["result"] for entry in report["peers"].values()]
    columns = STAGES + tuple(k for k in CUDA_STAGES if any(k in r for r in results))
    lines = [
        f"# Pipeline benchmark — {report['machine']}",
        "",
        f"txt2img {report['size']}², {report['steps']} steps, cfg {CFG}, DPM++ 2M Karras; img2img denoise 0.5.",
        "",
        "| peer | dtype | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for name, entry in report["peers"].items():
        cells = [f"{entry['result'].get(k, float('nan')):.3f}" for k in columns]
        lines.append(f"| {name} | {entry['dtype']} | " + " | ".join(cells) + " |")
    lines += ["", "| ratio | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name, r in report["ratios"].items():
        lines.append(f"| {name} | " + " | ".join(f"{r[k]:.2f}" if k in r else "–" for k in columns) + " |")
    floor = report.get("floor")
    if floor is not None:
        size = f"{floor['matmul_n']:.0f}² " if "matmul_n" in floor else ""  # a median of two ints is a float
        prefix = "matmul_gflops["
        each = ", ".join(f"{k[len(prefix) : -1]} {v:.0f}" for k, v in floor.items() if k.startswith(prefix)) or "torch.mm"
        lines += [
            "",
            f"UNet call: {floor['unet_gflop']:.0f} GFLOP; matmul {size}{floor['matmul_gflops']:.0f} GFLOP/s "
            f"({report['dtype']}; the faster of: {each}); floor {floor['floor_step_s']:.3g} s/step; ours "
            f"{report['step_over_floor']:.2f}× the floor.",
        ]
    if report.get("rounds"):
        lines += ["", "s/step in each round (the floor's too): " + "; ".join(
            ", ".join(f"{name} {value:.3g}" for name, value in round_.items()) for round_ in report["rounds"])]  # fmt: skip
    if "auto" in report:
        lines += [
            "",
            f"Default dtype (auto = {report['auto']['dtype']}): end-to-end {report['auto']['e2e_s']:.1f} s vs "
            f"diffusers' default fp32 {report['auto']['diffusers_e2e_s']:.1f} s = {report['auto']['ratio']:.2f}×; "
            f"max abs pixel drift vs fp32 {report['auto']['drift']:.4f}.",
        ]
    if report.get("note"):
        lines += ["", report["note"]]
    return "\n".join(lines) + "\n"


def e2e(result: dict) -> float:
    return result["encode_s"] * 2 + result["sample_s"] + result["decode_s"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=list(WORKERS))
    parser.add_argument("--model", type=Path)
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES) + ["auto"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--peers", default="ours,diffusers,comfyui")
    parser.add_argument("--keep-image", action="store_true")
    parser.add_argument("--cache", type=Path, default=CACHE, help="model folder (default $ALTDIFF_BENCH_MODELS, else "
                        "bench/cache/models); the random model is written there on first use")  # fmt: skip
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the .json / .md report goes")
    parser.add_argument("--note", default="", help="a line appended to the markdown report (e.g. a peer not run)")
    args = parser.parse_args(argv)
    if args.worker:
        result = WORKERS[args.worker](args)
        print(json.dumps(result))  # noqa: T201 - the worker's answer to the driver, on stdout
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.model = ensure_model(args.cache)
    peers = args.peers.split(",")
    machine = f"{args.device}, {os.cpu_count()} cores"
    if args.device.startswith("cuda"):
        import torch

        machine = f"{torch.cuda.get_device_name()}, {os.cpu_count()} cores"
    report = {
        "machine": machine,
        "size": args.size,
        "steps": args.steps,
        "dtype": args.dtype,
        "peers": {},
        "ratios": {},
        "note": args.note,
    }
    stem = args.results / f"pipeline_{args.device}_{args.dtype}"
    runs: dict[str, list[dict]] = {name: [] for name in [*peers, "floor"]}
    for _ in range(args.repeats):
        # Round robin, not one peer's repeats after another's: a shared machine's speed drifts over minutes (the 2-core
        # VM's s/step moved by 30 % between runs), and each round gives every peer and the floor the same phase.
        for name, done in runs.items():
            done.append(run_worker(name, args, args.dtype))
            if name != "floor":
                report["peers"][name] = {"dtype": args.dtype, "result": medians(done)}
            report["rounds"] = [{name: done[k]["step_s" if name != "floor" else "floor_step_s"] for name, done in runs.items()
                                 if k < len(done)} for k in range(len(runs["ours"]))]  # fmt: skip
            save(report, stem)
    ours = report["peers"]["ours"]["result"]
    for name in peers:
        if name != "ours":
            report["ratios"][f"ours/{name}"] = ratios(ours, report["peers"][name]["result"])
    report["floor"] = medians(runs["floor"])
    report["step_over_floor"] = ours["step_s"] / report["floor"]["floor_step_s"]
    save(report, stem)
    if args.dtype == "fp32" and "diffusers" in peers:
        # The default ("auto") dtype end to end against diffusers' default (fp32), and its drift against fp32.
        import numpy as np

        args.keep_image = True
        exact = run_worker("ours", args, "fp32")
        auto = run_worker("ours", args, "auto")
        drift = float(np.abs(np.asarray(auto.pop("image")) - np.asarray(exact.pop("image"))).max())
        report["auto"] = {
            "dtype": auto["info"],
            "e2e_s": e2e(auto),
            "diffusers_e2e_s": e2e(report["peers"]["diffusers"]["result"]),
            "drift": drift,
        }
        report["auto"]["ratio"] = report["auto"]["e2e_s"] / report["auto"]["diffusers_e2e_s"]
    save(report, stem)
    logger.info("\n%s", markdown(report))
    return 0


def save(report: dict, stem: Path) -> None:
    """Write the report so far as ``stem.json`` and ``stem.md``; called after each part, so a run that is stopped
    (a time limit, a failing peer) still leaves what it measured."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    stem.with_suffix(".md").write_text(markdown(report), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
