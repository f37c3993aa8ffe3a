"""Load time and peak memory of a full-size random AltDiffusion-m9 (1.5 B parameters, fp16 on disk): the pack's loader
(diffusers folder, and the same weights as one A1111/LDM single file) against diffusers' own ``from_pretrained`` of
the same folder (``RobertaSeriesModelWithTransformation`` + ``UNet2DConditionModel`` + ``AutoencoderKL``, fp16).

Run on demand, from the pack's folder (not part of the test suite)::

    python bench/load_bench.py                       # CPU, 2 rounds, writes bench/cache/load_bench/
    python bench/load_bench.py --devices cpu cuda    # also to the GPU (CPU-side peak RSS + GPU memory)
    python bench/load_bench.py --size tiny           # a quick check of the script itself

The models are written once into ``--cache`` (``tests/factories.py``: the folder, ~2.9 GB; ``tests/ldm_checkpoints.py``:
the single file, whose UNet/VAE/text-encoder configs the loader infers from shapes). Before timing, every weight file is
read once, so all loads start from a warm page cache. Each load runs in a fresh Python subprocess, which reports:

- ``load_s``: wall time of the load alone (after the imports), to the device asked, synchronised;
- ``first_use_s``: then reading every weight once (``p.sum()``), where memory-mapped weights are paged in; ``ready_s``
  is the sum of the two, the time until every weight is in memory;
- ``peak_rss_mb``: the process's peak resident set (``VmHWM``; ``ru_maxrss`` is recorded too but survives ``execve``,
  so it would report the parent's size), imports included. Memory-mapped file pages a load touches count here too;
- ``load_rss_mb``: that peak minus the resident set right after the imports: what the load itself added;
- ``end_rss_mb`` / ``used_rss_mb``: resident right after the load, and after every weight has been read once (first
  use: memory-mapped weights come in then, as file-backed pages the kernel may drop again).

The table gives medians over the rounds and ratios ours / diffusers' (with accelerate's low_cpu_mem_usage path when
accelerate is installed, as diffusers recommends; ``diffusers-no-accelerate`` is what it does without accelerate).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("ours-folder", "ours-single-file", "diffusers", "diffusers-no-accelerate")
BASELINE = "diffusers"
MEDIANS = ("load_s", "ready_s", "peak_rss_mb", "load_rss_mb")

logger = logging.getLogger("load_bench")


# ---------------------------------------------------------------------------------------------------- one load (child)


def _status_mb(field: str) -> float:
    """``VmHWM`` (peak resident set of this process image) or ``VmRSS`` (resident now) from /proc, in MiB.

    ``ru_maxrss`` survives ``execve``: a child started from a big parent reports the parent's size as its own peak,
    so it is recorded but not used.
    """
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def _load_ours(kind: str, folder: Path, single: Path, device: str):
    import runpy

    runpy.run_path(str(ROOT / "__main__.py"), run_name="bench")["load_pack"](ROOT)
    import torch
    from comfyui_altdiffusion import altdiff_core as core

    def load():
        if kind == "ours-folder":
            loaded = core.load_folder(folder, device=device, dtype=torch.float16, vae_dtype=torch.float16)
        else:
            loaded = core.load_checkpoint(single, device=device, dtype=torch.float16, vae_dtype=torch.float16)
        return [loaded.text_encoder.module, loaded.model.module, loaded.vae.module]

    return load


def _load_diffusers(kind: str, folder: Path, single: Path, device: str):
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.pipelines.deprecated.alt_diffusion.modeling_roberta_series import RobertaSeriesModelWithTransformation

    extra = {"low_cpu_mem_usage": False} if kind == "diffusers-no-accelerate" else {}

    def load():
        text_encoder = RobertaSeriesModelWithTransformation.from_pretrained(folder / "text_encoder", dtype=torch.float16)
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch.float16, **extra)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float16, **extra)
        return [m.to(device).eval() for m in (text_encoder, unet, vae)]

    return load


LOADERS = {
    "ours-folder": _load_ours,
    "ours-single-file": _load_ours,
    "diffusers": _load_diffusers,
    "diffusers-no-accelerate": _load_diffusers,
}


def run_one(kind: str, folder: Path, single: Path, device: str) -> dict:
    started = time.perf_counter()
    load = LOADERS[kind](kind, folder, single, device)
    import torch

    if device == "cuda":
        torch.zeros(1, device="cuda")  # CUDA context outside the timed part, for every kind alike
    imported = time.perf_counter()
    import_peak, import_rss = _status_mb("VmHWM"), _status_mb("VmRSS")
    modules = load()
    if device == "cuda":
        torch.cuda.synchronize()
    loaded = time.perf_counter()
    peak, end = _status_mb("VmHWM"), _status_mb("VmRSS")
    params = [p for m in modules for p in m.parameters()]
    with torch.no_grad():
        for p in params:  # first use: memory-mapped weights are read in now
            p.sum()
    if device == "cuda":
        torch.cuda.synchronize()
    used = time.perf_counter()
    return {
        "kind": kind,
        "device": device,
        "import_s": round(imported - started, 2),
        "load_s": round(loaded - imported, 2),
        "first_use_s": round(used - loaded, 2),
        "ready_s": round(used - imported, 2),
        "peak_rss_mb": round(peak),
        "import_peak_rss_mb": round(import_peak),
        "load_rss_mb": round(peak - import_rss),
        "end_rss_mb": round(end),
        "used_rss_mb": round(_status_mb("VmRSS")),
        "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "gpu_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else None,
        "params": sum(p.numel() for p in params),
        "dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in params}),
        "param_devices": sorted({p.device.type for p in params}),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


# ----------------------------------------------------------------------------------------------- orchestration (parent)


def prepare(cache: Path, size: str) -> tuple[Path, Path]:
    """The full (or tiny) random m9 as a diffusers folder and as one LDM file, written once into ``cache``."""
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from factories import write_altdiffusion_folder
    from ldm_checkpoints import write_ldm_checkpoint

    folder = cache / f"AltDiffusion-m9-{size}"
    single = cache / "checkpoints" / f"AltDiffusion-m9-{size}.safetensors"
    if not (folder / "model_index.json").is_file():
        started = time.perf_counter()
        write_altdiffusion_folder(folder, "m9", size=size, dtype=torch.float16)
        logger.info("wrote %s in %.0f s", folder, time.perf_counter() - started)
    if not single.is_file():
        # full size: configs inferred from the weights' shapes; tiny: they can't be, so a companion folder holds them
        write_ldm_checkpoint(folder, single, companion=size == "tiny", tokenizer=True, dtype=torch.float16)
        logger.info("wrote %s", single)
    return folder, single


def warm_page_cache(*paths: Path) -> int:
    total = 0
    for path in paths:
        for file in [path] if path.is_file() else sorted(path.rglob("*.safetensors")):
            with open(file, "rb") as f:
                while chunk := f.read(64 * 2**20):
                    total += len(chunk)
    return total


def run_child(kind: str, folder: Path, single: Path, device: str, timeout: float) -> dict:
    command = [sys.executable, __file__, "--one", kind, "--folder", str(folder), "--single", str(single), "--device", device]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if result.returncode != 0:
        return {"kind": kind, "device": device, "error": result.stderr.strip().splitlines()[-1:]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    for device in dict.fromkeys(r["device"] for r in runs):
        ok = [r for r in runs if r["device"] == device and "error" not in r]
        medians = {}
        for kind in KINDS:
            mine = [r for r in ok if r["kind"] == kind]
            if mine:
                medians[kind] = (
                    {key: statistics.median(r[key] for r in mine) for key in MEDIANS}
                    | {k: mine[0][k] for k in ("gpu_peak_mb", "params", "end_rss_mb", "used_rss_mb")}
                    | {"n": len(mine)}
                )
        base = medians.get(BASELINE)
        for kind, m in medians.items():
            ratio = {k: round(m[k] / base[k], 2) if base and base[k] else None for k in MEDIANS}
            rows.append({"device": device, "kind": kind, **m, **{f"{k}_ratio": v for k, v in ratio.items()}})
    return rows


def markdown(rows: list[dict]) -> str:
    head = (
        "| device | loader | runs | load s | × diffusers | load + first use s | × | peak RSS MiB | × "
        "| added by the load MiB | × "
        "| RSS after load / after first use MiB | GPU peak MiB |"
    )
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        lines.append(
            f"| {r['device']} | {r['kind']} | {r['n']} | {r['load_s']:.2f} | {r['load_s_ratio']} | {r['ready_s']:.2f} | "
            f"{r['ready_s_ratio']} | {r['peak_rss_mb']:.0f} | "
            f"{r['peak_rss_mb_ratio']} | {r['load_rss_mb']:.0f} | {r['load_rss_mb_ratio']} | "
            f"{r['end_rss_mb']} / {r['used_rss_mb']} | {r['gpu_peak_mb'] or ''} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="full", choices=["full", "tiny"])
    parser.add_argument("--devices", nargs="+", default=["cpu"])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=3600, help="start no new round after this many seconds")
    parser.add_argument("--cache", type=Path, default=ROOT / "bench" / "cache" / "load_bench")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default: <cache>/results-<size>.json)")
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--one", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--single", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--device", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.one:
        sys.stdout.write(json.dumps(run_one(args.one, args.folder, args.single, args.device)) + "\n")
        return 0
    if args.prepare:
        sys.stdout.write(json.dumps([str(p) for p in prepare(args.cache, args.size)]) + "\n")
        return 0

    started = time.perf_counter()
    args.cache.mkdir(parents=True, exist_ok=True)
    # written in a child, so that this process stays small (its children are measured)
    command = [sys.executable, __file__, "--prepare", "--size", args.size, "--cache", str(args.cache)]
    prepared = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    sys.stderr.write(prepared.stderr)
    folder, single = map(Path, json.loads(prepared.stdout.strip().splitlines()[-1]))
    warmed = warm_page_cache(folder, single)
    logger.info("page cache warmed with %.2f GiB", warmed / 2**30)
    runs: list[dict] = []
    for round_index in range(args.repeats):
        if round_index and time.perf_counter() - started > args.budget_s:
            break
        for device in args.devices:
            for kind in args.kinds:
                run = run_child(kind, folder, single, device, timeout=900)
                logger.info("%s", json.dumps(run))
                runs.append(run)
    rows = summarise(runs)
    table = markdown(rows)
    sys.stdout.write(table + "\n")
    first = next((r for r in runs if "torch" in r), {})
    environment = {
        "python": platform.python_version(),
        "torch": first.get("torch"),
        "cpu_count": os.cpu_count(),
        "accelerate": importlib.util.find_spec("accelerate") is not None,
        "gpu": first.get("gpu"),
        "folder_bytes": sum(f.stat().st_size for f in folder.rglob("*.safetensors")),
        "single_file_bytes": single.stat().st_size,
    }
    out = args.out or args.cache / f"results-{args.size}.json"
    out.write_text(json.dumps({"environment": environment, "runs": runs, "summary": rows, "table": table}, indent=2))
    logger.info("results in %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
