"""The native path against ComfyUI's own and the engine's: one full-size SD1 UNet file, s/step, load time, peak RSS.

Three ways to sample with the same UNet weights (an m9-shaped SD1 UNet, 860 M parameters, random, written once as an
fp16 safetensors file; ``tests/factories.py``), each in its own fresh process:

- **native**: a real ComfyUI 0.3.75 server (``tests/comfy_server.py``): ``AltDiffusionCheckpointLoader`` →
  ``CLIPTextEncode`` ×2 → stock ``KSampler`` → ``SaveLatent`` (the loader reads the diffusers folder whose UNet file
  *is* the file below: a hard link);
- **unetloader**: another fresh server: ``UNETLoader`` (``models/diffusion_models``, the same file) → ``KSampler`` →
  ``SaveLatent``, conditioned by ``NativeBenchConditioning`` (a node of this file, copied into that server's
  ``custom_nodes``): a fixed random ``[1, 77, 768]`` CONDITIONING, the shape ``CLIPTextEncode`` gives on the native
  side, so both samplers cross-attend 77 tokens of 768 and do the same work;
- **engine**: a plain Python process without ComfyUI, the command line's path (``python . --prompt …``):
  ``AltDiffusionLoader.load_path`` → the engine's text encode → ``altdiff_core.sample_latent``.

By default (``--full unet``) the text encoder and VAE are the test fixtures' tiny ones (their output widths are the
real 768 and 4 latent channels), so the numbers are the UNet's; ``--full all`` loads XLM-R large and the SD VAE too
(only the native and engine sides have an XLM-R, so there the native/unetloader memory ratio compares more weights
against fewer). Sampler ``euler``, scheduler ``normal`` (one UNet call per step), cfg 7.5 (a CFG batch of 2).

Measured per run:

- ``step_s``: the gaps between consecutive step reports (``progress`` events of the KSampler in a server, the engine's
  step callback): ``steps - 1`` gaps per run; ``first_step_s`` is from the sampler's start to the first report (it
  also pays for moving/casting weights on first use and for kernel warm-up);
- ``load_s``: the loader node's span in the server (``executing`` events), ``load_path`` in the engine process;
- ``peak_rss_mb``: the process's ``VmHWM`` at the end (the server's, imports and start-up included; never both paths in
  one process); ``base_rss_mb``: its resident set before the prompt (imports); ``load_peak_mb`` / ``sample_peak_mb``:
  the largest resident set sampled every 20 ms during the loader's and the sampler's spans (in the engine process:
  ``VmHWM`` after the load, and over sampling after resetting it through ``/proc/self/clear_refs``).

Rounds go round robin (every peer once per round, each from a warm page cache) so a shared machine's drift hits all
alike; ratios native/unetloader, native/unetloader_sdpa and native/engine are given as the median over rounds of the
per-round ratio, with their range. ``--dtypes fp32,auto``: fp32 everywhere (equal dtype; ComfyUI started with
``--fp32-unet``), then the default ``auto`` for the pack's sides (bf16 on a CPU with AVX512-BF16 or AMX, fp16 on CUDA,
else fp32) against ComfyUI's own default, which is fp32 on a CPU (``unetloader_bf16``, ComfyUI started with
``--bf16-unet``: bf16 weights computed in fp32 by its manual cast, when asked for in ``--peers``). ``unetloader_sdpa``
is ComfyUI's own path started with ``--use-pytorch-cross-attention``: the SDPA attention the native MODEL sets for
itself on a CPU, where ComfyUI's default is its sub-quadratic attention, so that ratio shows what remains once
attention is equal.

``--diagnose`` instead loads the model once, in-process inside ComfyUI's modules, stage by stage: the resident set and
its peak after the engine's load, after building ComfyUI's UNet from it (both alive), after dropping the engine's
modules and after giving free heap back (``malloc_trim``): where the native loader's memory goes.

Usage (in the test venv, from the pack's folder)::

    python bench/native_bench.py                          # 256², 4 steps, 3 rounds, fp32 then auto: ~15 min on 2 cores
    python bench/native_bench.py --rounds 2 --dtypes fp32 # quicker
    python bench/native_bench.py --full all               # XLM-R large and the SD VAE as well (built once, ~2 min)
    python bench/native_bench.py --diagnose --dtypes fp32 # where the native loader's memory goes
    python bench/native_bench.py --pack /tmp/pack-copy --peers native --label fix   # a patched copy of the pack

Models are written once into ``--cache`` (default ``$ALTDIFF_BENCH_MODELS``, else ``bench/cache/models``; the same
files as ``bench/alternating_memory.py``'s). Results: ``bench/reports/cpu-<CPUs>core-<date>-native_<full>[_<label>]``
``.json`` and ``.md``, rewritten after every run so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import logging
import os
import platform
import re
import runpy
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("ALTDIFF_BENCH_MODELS", ROOT / "bench" / "cache" / "models"))
REPORTS = ROOT / "bench" / "reports"
MODEL = "AltDiffusion-m9-fullunet"
UNET_FILE = f"{MODEL}-unet.safetensors"
PROMPT = "一只戴着红色围巾的橘猫坐在雪地里，油画风格"
NEGATIVE = ""
SEED = 42
CFG = 7.5
SAMPLER, SCHEDULER = "euler", "normal"
PEERS = ("native", "unetloader", "unetloader_sdpa", "unetloader_bf16", "engine")
RATIOS = ("unetloader", "unetloader_sdpa", "engine")
"""native/<peer> ratios the report gives."""
NATIVE_VAE_GROUPS = 32
"""ComfyUI's VAE (what the native loader hands out) needs 32 normalisation groups; older tiny test VAEs had 8."""
METRICS = ("step_s", "first_step_s", "load_s", "peak_rss_mb", "base_rss_mb", "load_peak_mb", "sample_peak_mb")

logger = logging.getLogger("native_bench")


# ----------------------------------------------------------------------------------------------- the model


def ensure_model(cache: Path, full: str) -> tuple[Path, Path]:
    """The m9 folder (``cache/native_bench/altdiffusion-<full>/<MODEL>``) and its UNet file (``cache/unets/…``, the
    same file as ``bench/alternating_memory.py``'s; the folder's UNet weights are hard-linked to it), written once."""
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from factories import write_altdiffusion_folder, write_component_file

    unet = cache / "unets" / UNET_FILE
    folder = cache / "native_bench" / f"altdiffusion-{full}" / MODEL
    vae_config = folder / "vae" / "config.json"
    if vae_config.is_file() and json.loads(vae_config.read_text()).get("norm_num_groups", 32) != NATIVE_VAE_GROUPS:
        logger.info("%s was written by older test factories (its VAE is not one ComfyUI's VAE holds): rewriting", folder)
        shutil.rmtree(folder)
    if not unet.is_file():
        logger.info("writing the full-size random SD1 UNet (fp16) into %s (about a minute)", unet)
        unet.parent.mkdir(parents=True, exist_ok=True)
        write_component_file(unet.with_suffix(".tmp"), "unet", family="sd1", seed=0, dtype=torch.float16)
        unet.with_suffix(".tmp").rename(unet)
    if not (folder / "model_index.json").is_file():
        logger.info("writing %s (full size: %s) into %s", MODEL, full, folder)
        partial = folder.with_name(folder.name + ".tmp")  # renamed when complete: a killed run leaves no half folder
        shutil.rmtree(partial, ignore_errors=True)
        size = "full" if full == "all" else "tiny"
        write_altdiffusion_folder(partial, "m9", size=size, unet_size="full", seed=0, dtype=torch.float16, unet_file=unet)
        partial.rename(folder)
    if (folder / "unet" / "diffusion_pytorch_model.safetensors").stat().st_ino != unet.stat().st_ino:
        logger.warning("%s's UNet is a copy of %s, not a link: equal weights, but two files", folder, unet)
    return folder, unet


# ----------------------------------------------------------------------------------------------- memory readings


def status_mb(pid: int | str = "self") -> dict[str, float]:
    """``VmRSS`` and ``VmHWM`` of a process, in MiB."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":", 1)
                fields[name] = int(value.split()[0]) / 1024
    return fields


def reset_hwm(pid: int | str = "self") -> bool:
    """Reset ``VmHWM`` to the current resident set (Linux ≥ 4.0); False where refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def malloc_trim() -> None:
    """Give glibc's free heap back to the system (nothing elsewhere)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


class RssSampler:
    """``(perf_counter, VmRSS MiB)`` of process ``pid`` every ``interval`` seconds, on a thread, until ``stop()``."""

    def __init__(self, pid: int, interval: float = 0.02):
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True, name="rss-sampler")
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.samples.append((time.perf_counter(), status_mb(self.pid)["VmRSS"]))
            except (OSError, KeyError):
                return

    def peak(self, start: float, end: float) -> float:
        inside = [rss for t, rss in self.samples if start <= t <= end]
        return max(inside) if inside else float("nan")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _gaps(stamps: list[float]) -> list[float]:
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


# ----------------------------------------------------------------------------------------------- server peers


def _sample_and_save(size: int, steps: int) -> dict:
    """The nodes after the loader ``L`` and the conditionings ``P``/``N``: an empty latent, KSampler at the bench's
    settings, SaveLatent."""
    sys.path.insert(0, str(ROOT / "tests"))  # imported here: this file also runs as a custom node, away from tests/
    from graphs import empty_latent, ksampler, save_latent

    settings = {"seed": SEED, "steps": steps, "cfg": CFG, "sampler_name": SAMPLER, "scheduler": SCHEDULER, "denoise": 1.0}
    return {
        "E": empty_latent(size),
        "K": ksampler(("L", 0), ("P", 0), ("N", 0), ("E", 0), **settings),
        "S": save_latent(("K", 0), "native_bench"),
    }


def graph_native(size: int, steps: int, dtype: str) -> dict:
    return {
        "L": {"class_type": "AltDiffusionCheckpointLoader", "inputs": {"model_name": MODEL, "dtype": dtype}},
        "P": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["L", 1]}},
        "N": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["L", 1]}},
        **_sample_and_save(size, steps),
    }


def graph_unetloader(size: int, steps: int, dtype: str) -> dict:
    return {
        "L": {"class_type": "UNETLoader", "inputs": {"unet_name": UNET_FILE, "weight_dtype": "default"}},
        "P": {"class_type": "NativeBenchConditioning", "inputs": {"seed": 1, "width": 768}},
        "N": {"class_type": "NativeBenchConditioning", "inputs": {"seed": 2, "width": 768}},
        **_sample_and_save(size, steps),
    }


def server_peer(peer: str, dtype: str, args) -> tuple[dict, list[str], dict]:
    """(graph, extra ComfyUI arguments, model folders) of a server peer."""
    if peer == "native":
        return graph_native(args.size, args.steps, dtype), [], {"altdiffusion": [args.folder.parent]}
    if peer == "unetloader_bf16":
        extra = ["--bf16-unet"]
    else:  # ComfyUI's own choice on a CPU is fp32 whatever "auto" means for the pack; fp32 asked for explicitly
        extra = ["--fp32-unet"] if dtype == "fp32" else []
    if peer == "unetloader_sdpa":  # the attention the native MODEL picks on a CPU, chosen for all of ComfyUI by hand
        extra.append("--use-pytorch-cross-attention")
    return graph_unetloader(args.size, args.steps, dtype), extra, {"diffusion_models": [args.unet.parent]}


def serve(graph: dict, extra: list[str], paths: dict, pack: Path, what: str, cpu: bool = True) -> dict:
    """Run ``graph`` once in a fresh ComfyUI server (``pack`` and this file's ``NativeBenchConditioning`` in its
    ``custom_nodes``; ``extra`` command-line arguments, ``paths`` extra model folders; ``cpu``: started with ``--cpu``,
    else ComfyUI takes the GPU); ``what`` names the run in errors.

    Returns ``spans`` (node id → ``[start, end]`` ``perf_counter`` times, from ``executing`` events), ``progress``
    (node id → the times of its step reports, ``progress`` events), ``meter`` (the server's resident set every 20 ms,
    an ``RssSampler``), ``base_rss_mb`` (before the prompt), ``status`` (``VmRSS``/``VmHWM`` at the end), ``log`` and
    ``startup_s``. Also ``bench/pipeline_bench.py``'s server peers."""
    sys.path.insert(0, str(ROOT / "tests"))
    from comfy_server import ComfyServer

    with tempfile.TemporaryDirectory(prefix="native_bench_") as work:
        custom = Path(work) / "custom_nodes"
        custom.mkdir()
        shutil.copy(__file__, custom / "native_bench_nodes.py")  # NativeBenchConditioning, for the unetloader graph
        with ComfyServer(pack, Path(work), model_paths=paths, extra_args=extra, cpu=cpu) as server:
            pid = server.pid
            base = status_mb(pid)["VmRSS"]
            meter = RssSampler(pid)
            spans: dict[str, list[float]] = {}
            progress: dict[str, list[float]] = {}
            current: dict = {"node": None}

            def on_event(event: dict) -> None:
                now = time.perf_counter()
                if event["type"] == "executing":
                    if current["node"] is not None:
                        spans[current["node"]].append(now)
                    current["node"] = event["data"].get("node")
                    if current["node"] is not None:
                        spans[current["node"]] = [now]
                elif event["type"] == "progress":
                    progress.setdefault(event["data"].get("node"), []).append(now)

            try:
                result = server.run(graph, timeout=3600, on_event=on_event)
            finally:
                meter.stop()
            if result.status_str != "success":
                raise RuntimeError(f"{what} failed: {result.error}\n{server.log_tail()}")
            return {
                "spans": spans,
                "progress": progress,
                "meter": meter,
                "base_rss_mb": base,
                "status": status_mb(pid),
                "log": server.log_text(),
                "startup_s": server.startup_seconds,
            }


def loaded_as(log: str) -> list[str]:
    """The load lines of a server log (the pack's "… loaded in …" and ComfyUI's "model weight dtype …")."""
    return [line for line in log.splitlines() if "loaded in" in line or "model weight dtype" in line]


def run_server(peer: str, dtype: str, args) -> dict:
    graph, extra, paths = server_peer(peer, dtype, args)
    served = serve(graph, extra, paths, args.pack, f"{peer} ({dtype})")
    spans, progress, status, meter = served["spans"], served["progress"]["K"], served["status"], served["meter"]
    load, sample = spans["L"], spans["K"]
    return {
        "step_s_each": _gaps(progress),
        "first_step_s": progress[0] - sample[0],
        "load_s": load[1] - load[0],
        "peak_rss_mb": status["VmHWM"],
        "base_rss_mb": served["base_rss_mb"],
        "rss_after_mb": status["VmRSS"],
        "load_peak_mb": meter.peak(*load),
        "sample_peak_mb": meter.peak(*sample),
        "startup_s": served["startup_s"],
        "loaded_as": loaded_as(served["log"]),
    }  # fmt: skip


# ----------------------------------------------------------------------------------------------- engine peer (child)


def _load_pack(pack: Path):
    return runpy.run_path(str(pack / "__main__.py"), run_name="bootstrap")["load_pack"](pack)


def worker_engine(args) -> dict:
    import torch

    _load_pack(args.pack)
    from comfyui_altdiffusion.altdiff_core import sample_latent
    from comfyui_altdiffusion.nodes import comfy_seam, loader, text_encode

    if comfy_seam.IN_COMFYUI:
        raise RuntimeError("the engine worker found ComfyUI on its path; it must run the command line's path")
    base = status_mb()["VmRSS"]
    started = time.perf_counter()
    model, text_encoder, _vae, info = loader.AltDiffusionLoader.load_path(args.folder, args.dtype)
    load_s = time.perf_counter() - started
    load_peak = status_mb()["VmHWM"]
    encode = text_encode.AltDiffusionTextEncode()
    (positive,) = encode.encode(PROMPT, text_encoder)
    (negative,) = encode.encode(NEGATIVE, text_encoder)
    latent = torch.zeros(1, 4, args.size // 8, args.size // 8)
    stamps: list[float] = []
    reset_hwm()
    start = time.perf_counter()
    sample_latent(model, positive[0][0], negative[0][0], latent, seed=SEED, steps=args.steps, cfg=CFG,
                  sampler_name=SAMPLER, scheduler=SCHEDULER, callback=lambda *_: stamps.append(time.perf_counter()))  # fmt: skip
    status = status_mb()
    return {
        "step_s_each": _gaps(stamps),
        "first_step_s": stamps[0] - start,
        "load_s": load_s,
        "peak_rss_mb": max(load_peak, status["VmHWM"]),
        "base_rss_mb": base,
        "rss_after_mb": status["VmRSS"],
        "load_peak_mb": load_peak,
        "sample_peak_mb": status["VmHWM"],
        "loaded_as": [info],
        "cond_tokens": int(positive[0][0].shape[1]),
    }


# ----------------------------------------------------------------------------------------------- diagnosis (child)


def worker_diagnose(args) -> dict:
    """The native loader stage by stage, in this process with ComfyUI's modules imported (as inside a server)."""
    from load_bench import warm_page_cache  # bench/ is this script's folder, so on sys.path

    _in_comfyui(args.pack)
    import torch
    from comfyui_altdiffusion.altdiff_core import load_model, resolve_dtype
    from comfyui_altdiffusion.nodes import comfy_seam
    from comfyui_altdiffusion.nodes.comfy_seam import native

    if not comfy_seam.IN_COMFYUI:
        raise RuntimeError("ComfyUI's modules were not found")
    warm_page_cache(args.folder)
    stages: list[dict] = []

    def stage(name: str, started: float) -> None:
        status = status_mb()
        stages.append({"stage": name, "s": time.perf_counter() - started, "peak_mb": status["VmHWM"], "rss_mb": status["VmRSS"]})
        logger.info("%s", stages[-1])
        reset_hwm()

    def weights_mb(module: torch.nn.Module) -> float:
        return sum(t.nbytes for t in (*module.parameters(), *module.buffers())) / 2**20

    gc.collect()
    reset_hwm()
    stage("imports", time.perf_counter())
    dtype = resolve_dtype(args.dtype, torch.device("cpu"))
    t = time.perf_counter()
    loaded = load_model(args.folder, device=torch.device("cpu"), dtype=dtype, vae_dtype=dtype)
    stage("engine load_model (diffusers UNet)", t)
    engine_unet_mb = weights_mb(loaded.model.module)
    t = time.perf_counter()
    patcher = native.native_model(loaded.model)
    stage("native_model (ComfyUI UNet built and filled)", t)
    comfy_unet_mb = weights_mb(patcher.model.diffusion_model)
    shared = {p.data_ptr() for p in loaded.model.module.parameters()} & {
        p.data_ptr() for p in patcher.model.diffusion_model.parameters()
    }
    t = time.perf_counter()
    clip, vae = native.native_clip(loaded.text_encoder), native.native_vae(loaded.vae)
    stage("native_clip + native_vae", t)
    t = time.perf_counter()
    del loaded
    gc.collect()
    stage("engine modules dropped (gc)", t)
    t = time.perf_counter()
    malloc_trim()
    stage("malloc_trim", t)
    return {
        "dtype": str(dtype),
        "stages": stages,
        "engine_unet_mb": engine_unet_mb,
        "comfy_unet_mb": comfy_unet_mb,
        "shared_tensors": len(shared),
        "alive": [type(x).__name__ for x in (patcher, clip, vae)],
    }


def _in_comfyui(pack: Path):
    """Import ComfyUI's modules in this process (as a server has them), then the pack."""
    sys.path.insert(0, str(ROOT / "tests"))
    from comfy_server import comfyui_source

    sys.path.insert(0, str(comfyui_source()))
    from comfy.cli_args import args as comfy_args

    comfy_args.cpu = True
    import comfy.model_management  # noqa: F401
    import folder_paths  # noqa: F401 - the pack's seam looks for it
    import latent_preview  # noqa: F401

    _load_pack(pack)


def worker_compute(args) -> dict:
    """One UNet call (CFG batch 2, 77 tokens) timed in this process, interleaved: the engine's diffusers UNet (with its
    CPU kernels, ``cpu_kernels``), and ComfyUI's UNet as the pack's native loader builds it, once with ComfyUI's
    attention choice (on a CPU: sub-quadratic) and once with ``attention_pytorch`` (SDPA) through
    ``transformer_options["optimized_attention_override"]``."""
    _in_comfyui(args.pack)
    import comfy.ldm.modules.attention as comfy_attention
    import torch
    from comfyui_altdiffusion.altdiff_core import load_model, resolve_dtype
    from comfyui_altdiffusion.nodes.comfy_seam import native

    dtype = resolve_dtype(args.dtype, torch.device("cpu"))
    loaded = load_model(args.folder, device=torch.device("cpu"), dtype=dtype, vae_dtype=dtype)
    patcher = native.native_model(loaded.model)
    comfy_unet = patcher.model.diffusion_model
    engine_unet = loaded.model.module
    side = args.size // 8
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, side, side, generator=generator).to(dtype)
    context = torch.randn(2, 77, 768, generator=generator).to(dtype)
    t = torch.tensor([500.0, 500.0])

    def sdpa(func, *a, **kw):
        return comfy_attention.attention_pytorch(*a, **kw)

    layers = sorted({f"{type(m).__module__.rsplit('.', 1)[-1]}.{type(m).__qualname__}" for m in comfy_unet.modules()
                     if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)})  # fmt: skip
    calls = {
        "engine (diffusers UNet, cpu_kernels, SDPA)": lambda: engine_unet(x, t, encoder_hidden_states=context).sample,
        f"native UNet, ComfyUI's {comfy_attention.optimized_attention.__name__}": lambda: comfy_unet(
            x, t, context=context, transformer_options={}
        ),
        "native UNet, attention_pytorch override": lambda: comfy_unet(
            x, t, context=context, transformer_options={"optimized_attention_override": sdpa}
        ),
    }
    import comfy.sample
    from comfyui_altdiffusion.altdiff_core import sample_latent

    latent = torch.zeros(1, 4, side, side)
    cond = context[:1]
    runs = {  # a whole sampling run, per step: what each sampler adds around the same UNet
        "KSampler's loop on the native MODEL, per step": lambda: comfy.sample.sample(
            patcher,
            comfy.sample.prepare_noise(latent, SEED),
            args.steps,
            CFG,
            SAMPLER,
            SCHEDULER,
            [[cond, {}]],
            [[cond, {}]],
            latent,
            disable_pbar=True,
            seed=SEED,
        ),  # fmt: skip
        "the engine's sampler (sample_latent), per step": lambda: sample_latent(
            loaded.model,
            cond,
            cond,
            latent,
            seed=SEED,
            steps=args.steps,
            cfg=CFG,
            sampler_name=SAMPLER,
            scheduler=SCHEDULER,
        ),  # fmt: skip
    }
    times: dict[str, list[float]] = {name: [] for name in [*calls, *runs]}  # runs: seconds per step
    outputs = {}
    with torch.inference_mode():
        for run in runs.values():  # warm-up
            run()
        for _ in range(args.reps):
            for name, run in runs.items():
                started = time.perf_counter()
                run()
                times[name].append((time.perf_counter() - started) / args.steps)
        for name, call in calls.items():  # warm-up, and the outputs to compare
            outputs[name] = call().float()
        for _ in range(args.reps):
            for name, call in calls.items():
                started = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - started)
    first = next(iter(outputs.values()))
    return {
        "dtype": str(dtype),
        "size": args.size,
        "native_layers": layers,
        "native_attention_override": "optimized_attention_override" in patcher.model_options["transformer_options"],
        "calls": {name: {"median_s": _median(times[name]), "each": times[name]} for name in calls},
        "runs": {name: {"median_s": _median(times[name]), "each": times[name]} for name in runs},
        "steps": args.steps,
        "max_abs_diff_vs_engine": {name: (out - first).abs().max().item() for name, out in outputs.items()},
        "load_avg": os.getloadavg()[0],
    }


WORKERS = {"engine": worker_engine, "diagnose": worker_diagnose, "compute": worker_compute}


def run_worker(kind: str, dtype: str, args) -> dict:
    command = [sys.executable, __file__, "--worker", kind, "--dtype", dtype, "--folder", str(args.folder), "--size",
               str(args.size), "--steps", str(args.steps), "--pack", str(args.pack), "--reps", str(args.reps)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} worker ({dtype}) failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------- the ComfyUI node


class NativeBenchConditioning:
    """Test only: a fixed random CONDITIONING ``[1, 77, width]`` with a pooled output, no text encoder needed."""

    CATEGORY = "testing"
    FUNCTION = "make"
    RETURN_TYPES = ("CONDITIONING",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1}),
                             "width": ("INT", {"default": 768, "min": 8, "max": 4096})}}  # fmt: skip

    def make(self, seed: int, width: int):
        import torch

        generator = torch.Generator().manual_seed(seed)
        cond = torch.randn(1, 77, width, generator=generator)
        return ([[cond, {"pooled_output": torch.randn(1, width, generator=generator)}]],)


NODE_CLASS_MAPPINGS = {"NativeBenchConditioning": NativeBenchConditioning}


# ----------------------------------------------------------------------------------------------- report


def machine() -> dict:
    import torch

    cpu = "?"
    flags: set[str] = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and cpu == "?":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags |= {flag for flag in line.split(":", 1)[1].split() if flag in ("avx512_bf16", "amx_bf16", "amx_tile")}
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "bf16_flags": sorted(flags),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def _median(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def summarize(runs: list[dict]) -> dict:
    """Medians over a peer's runs; ``step_s`` over every step gap of every run, with its per-run medians."""
    out = {key: _median([r[key] for r in runs if key in r]) for key in METRICS if key != "step_s"}
    gaps = [g for r in runs for g in r["step_s_each"]]
    out["step_s"] = _median(gaps)
    out["step_s_rounds"] = [_median(r["step_s_each"]) for r in runs]
    out["step_s_range"] = [min(gaps), max(gaps)] if gaps else []
    out["load_s_rounds"] = [r["load_s"] for r in runs]
    out["peak_rss_mb_rounds"] = [r["peak_rss_mb"] for r in runs]
    out["added_mb"] = out["peak_rss_mb"] - out["base_rss_mb"]
    return out


STEP_STATISTICS = {"step_s": lambda r: _median(r["step_s_each"]), "step_min_s": lambda r: min(r["step_s_each"])}
"""A run's s/step: its median step, and its fastest (on a shared machine other work only ever adds time, so the
fastest of a run's steps is the least disturbed reading of the same work)."""


def ratio_rounds(a: list[dict], b: list[dict], key: str) -> list[float]:
    """Per-round ratio a/b of ``key`` (a ``STEP_STATISTICS`` name, or a run's own figure)."""
    value = STEP_STATISTICS.get(key, lambda r: r[key])
    return [value(x) / value(y) for x, y in zip(a, b, strict=False)]


def ratios(report: dict, dtype: str) -> dict:
    runs = report["runs"][dtype]
    out = {}
    for peer in RATIOS:
        if runs.get("native") and runs.get(peer):
            out[peer] = {}
            for key in ("step_s", "step_min_s", "load_s", "peak_rss_mb"):
                each = ratio_rounds(runs["native"], runs[peer], key)
                out[peer][key] = {"median": _median(each), "rounds": each}
            added = [(x["peak_rss_mb"] - x["base_rss_mb"]) / (y["peak_rss_mb"] - y["base_rss_mb"])
                     for x, y in zip(runs["native"], runs[peer], strict=False)]  # fmt: skip
            out[peer]["added_mb"] = {"median": _median(added), "rounds": added}
    return out


def _dtype_of(line: str) -> str:
    """The dtype part of a load log line: the pack's "…: float32 on cpu; …" or ComfyUI's "model weight dtype …"."""
    found = re.search(r": (\w+ on \w+);", line) or re.search(r"(model weight dtype .*)", line)
    return found[1] if found else line[-80:]


def _fmt(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if value == value else "–"


def markdown(report: dict) -> str:
    m = report["machine"]
    bf16 = ", ".join(m["bf16_flags"]) or "none"
    lines = [
        f"# Native path vs UNETLoader + KSampler vs the engine's sampler — {report['full_text']}",
        "",
        f"{m['date']}, {m['cpu']}, {m['cpus']} CPUs (bf16 instructions: {bf16}), {m['platform']}, torch {m['torch']}, "
        f"ComfyUI 0.3.75; load average {report['load_before']} before, {report.get('load_after', '…')} after "
        f"(the 2 cores are shared with other runs). One UNet file ({MODEL}, SD1, 860 M parameters, fp16 safetensors) "
        f"for every peer; {report['size']}×{report['size']} px, {report['steps']} steps of {SAMPLER}/{SCHEDULER}, "
        f"cfg {CFG} (batch 2), 77-token conditioning on every side; {report['rounds']} rounds, round robin, each run "
        f"in a fresh process from a warm page cache. Pack: {report['pack']}"
        + (f" ({report['label']})." if report["label"] else "."),
        "",
    ]  # fmt: skip
    for dtype, runs in report["runs"].items():
        lines += [f"## dtype {dtype}" + (f": auto = {report['auto']}" if dtype == "auto" else ""), ""]
        for peer, rs in ratios(report, dtype).items():
            parts = []
            for key, label in (("step_s", "s/step"), ("step_min_s", "fastest step"), ("peak_rss_mb", "peak RSS"),
                               ("added_mb", "peak − base RSS"), ("load_s", "load")):  # fmt: skip
                r = rs[key]
                each = ", ".join(_fmt(v) for v in r["rounds"])
                parts.append(f"{label} **{_fmt(r['median'])}** ({each})")
            lines.append(f"- native/{peer}: " + "; ".join(parts))
        lines += [
            "",
            "| peer | loaded as | s/step median | per round | all steps min–max | first step s | load s | peak RSS MiB "
            "| base RSS MiB | peak − base | load peak | sampling peak |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for peer, done in runs.items():
            if not done:
                continue
            s = summarize(done)
            loaded = "; ".join(dict.fromkeys(_dtype_of(x) for r in done for x in r.get("loaded_as", [])))
            lines.append(
                f"| {peer} | {loaded} | {_fmt(s['step_s'], 3)} | {', '.join(_fmt(v, 3) for v in s['step_s_rounds'])} | "
                f"{'–'.join(_fmt(v, 3) for v in s['step_s_range'])} | {_fmt(s['first_step_s'])} | {_fmt(s['load_s'])} "
                f"({', '.join(_fmt(v) for v in s['load_s_rounds'])}) | {_fmt(s['peak_rss_mb'], 0)} "
                f"({', '.join(_fmt(v, 0) for v in s['peak_rss_mb_rounds'])}) | {_fmt(s['base_rss_mb'], 0)} | "
                f"{_fmt(s['added_mb'], 0)} | {_fmt(s['load_peak_mb'], 0)} | {_fmt(s['sample_peak_mb'], 0)} |"
            )
        lines.append("")
    if report.get("diagnosis"):
        for dtype, d in report["diagnosis"].items():
            lines += [
                f"## Where the native loader's memory goes ({dtype}, in-process, ComfyUI's modules imported)",
                "",
                f"Engine's diffusers UNet {d['engine_unet_mb']:.0f} MiB of weights, ComfyUI's UNet {d['comfy_unet_mb']:.0f} MiB; "
                f"tensors shared between them: {d['shared_tensors']}.",
                "",
                "| stage | s | peak during the stage MiB | RSS after MiB |",
                "|---|---|---|---|",
                *(f"| {s['stage']} | {s['s']:.2f} | {s['peak_mb']:.0f} | {s['rss_mb']:.0f} |" for s in d["stages"]),
                "",
            ]  # fmt: skip
            compute = d.get("compute")
            if compute:
                lines += [
                    f"One UNet call at {compute['size']}² (CFG batch 2, 77 tokens, {compute['dtype']}), same weights, one "
                    f"process, interleaved (load average {compute['load_avg']:.1f}); the native UNet's layers: "
                    f"{', '.join(compute['native_layers'])}; the native MODEL sets an attention override: "
                    f"{compute['native_attention_override']}.",
                    "",
                    "| UNet | median s | each s | × engine | max abs diff vs engine |",
                    "|---|---|---|---|---|",
                ]
                base = next(iter(compute["calls"].values()))["median_s"]
                for name, c in compute["calls"].items():
                    each = ", ".join(f"{v:.2f}" for v in c["each"])
                    diff = compute["max_abs_diff_vs_engine"][name]
                    lines.append(f"| {name} | {c['median_s']:.3f} | {each} | {c['median_s'] / base:.2f} | {diff:.2e} |")
                lines.append("")
            if compute and compute.get("runs"):
                runs = compute["runs"]
                engine = runs["the engine's sampler (sample_latent), per step"]["median_s"]
                lines += [
                    f"A whole {compute['steps']}-step run (euler/normal, cfg {CFG}), seconds per step, interleaved:",
                    "",
                    "| sampler | median s/step | each | × engine |",
                    "|---|---|---|---|",
                ]
                for name, c in runs.items():
                    each = ", ".join(f"{v:.2f}" for v in c["each"])
                    lines.append(f"| {name} | {c['median_s']:.3f} | {each} | {c['median_s'] / engine:.2f} |")
                lines.append("")
    if report.get("note"):
        lines += [report["note"], ""]
    return "\n".join(lines)


def save(report: dict, stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    stem.with_suffix(".md").write_text(markdown(report), encoding="utf-8")


# ----------------------------------------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=list(WORKERS))
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    parser.add_argument("--dtypes", default="fp32,auto", help="comma-separated: fp32, auto, bf16, fp16")
    parser.add_argument("--peers", default="native,unetloader,unetloader_sdpa,engine",
                        help=f"comma-separated, of {', '.join(PEERS)}")  # fmt: skip
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (latent side / 8)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--full", choices=("unet", "all"), default="unet", help="unet: tiny text encoder and VAE")
    parser.add_argument("--pack", type=Path, default=ROOT, help="the pack folder to measure (e.g. a patched copy)")
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--label", default="", help="appended to the report's name and title")
    parser.add_argument("--note", default="", help="a paragraph appended to the report")
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="only the native loader's memory, stage by stage, "
        "and one UNet call timed three ways in one process (--reps calls each, interleaved)",
    )
    parser.add_argument("--reps", type=int, default=4, help="--diagnose: timed UNet calls per way")  # fmt: skip
    args = parser.parse_args(argv)
    args.pack = args.pack.resolve()
    if args.worker:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
        print(json.dumps(WORKERS[args.worker](args)))  # noqa: T201 - the worker's answer to the driver, on stdout
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sys.path.insert(0, str(ROOT / "bench"))
    from load_bench import warm_page_cache

    args.folder, args.unet = ensure_model(args.cache, args.full)
    dtypes, peers = args.dtypes.split(","), args.peers.split(",")
    unknown = set(peers) - set(PEERS)
    if unknown:
        parser.error(f"unknown peers {sorted(unknown)}; choose from {', '.join(PEERS)}")
    date = datetime.date.today().isoformat()
    stem = REPORTS / (f"cpu-{os.cpu_count()}core-{date}-native_{args.full}" + (f"_{args.label}" if args.label else ""))
    if args.diagnose:
        stem = stem.with_name(stem.name + "_diagnose")
    full_text = {"unet": "full-size SD1 UNet, tiny text encoder (768 wide) and VAE",
                 "all": "full-size XLM-R large, SD1 UNet and SD VAE"}[args.full]  # fmt: skip
    report = {
        "machine": machine(), "size": args.size, "steps": args.steps, "rounds": args.rounds, "full": args.full,
        "full_text": full_text, "pack": str(args.pack), "label": args.label, "note": args.note,
        "load_before": " ".join(f"{v:.2f}" for v in os.getloadavg()), "runs": {}, "diagnosis": {},
    }  # fmt: skip
    import torch

    sys.path.insert(0, str(ROOT))
    from altdiff_core import resolve_dtype

    report["auto"] = str(resolve_dtype("auto", torch.device("cpu")))
    if args.diagnose:
        for dtype in dtypes:
            report["diagnosis"][dtype] = run_worker("diagnose", dtype, args)
            save(report, stem)
            if args.reps:
                report["diagnosis"][dtype]["compute"] = run_worker("compute", dtype, args)
                save(report, stem)
        logger.info("\n%s", markdown(report))
        return 0
    for dtype in dtypes:
        runs = report["runs"][dtype] = {peer: [] for peer in peers}
        for round_ in range(args.rounds):
            for peer in peers:
                warm_page_cache(args.folder, args.unet)
                logger.info("round %d/%d: %s (%s)", round_ + 1, args.rounds, peer, dtype)
                started = time.perf_counter()
                result = run_worker("engine", dtype, args) if peer == "engine" else run_server(peer, dtype, args)
                result["wall_s"] = time.perf_counter() - started
                result["load_avg"] = os.getloadavg()[0]
                logger.info("%s", {k: v for k, v in result.items() if k != "loaded_as"})
                runs[peer].append(result)
                report["load_after"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
                save(report, stem)
    logger.info("\n%s", markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
