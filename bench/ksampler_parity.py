"""The full parity table: every offered sampler × every scheduler, ours against ComfyUI's KSampler in a real ComfyUI.

The same measurement as ``tests/test_ksampler_parity.py`` (same UNet file on both sides, same CONDITIONING, latent,
seed, steps, cfg; fp32 on the CPU; max abs diff of the final raw latents), for all pairs instead of CI's two slices.
One graph per sampler holds a KSampler + AltDiffusionSampler pair for every scheduler, and KSampler once more on the
test node ``TestModelInOtherOrder`` (the tests' yardstick: the same model with oneDNN off).

Usage (from the pack's folder, in the test venv)::

    python bench/ksampler_parity.py                       # everything, ~20 UNet calls per pair and side
    python bench/ksampler_parity.py --samplers euler,heun --schedulers karras,normal --steps 8

Models are written once into ``bench/cache/models`` (~2 GB: the full SD1 UNet); the table goes to stdout and to
``bench/results/ksampler_parity.md`` (+ ``.json``). A full run costs about 2 × 252 pairs × 8-22 full-UNet calls, at
0.6 s (idle) to 10 s (busy) per call on a 2-core CPU: hours. ``ksampler_parity_inprocess.py`` measures the same
without the server, e.g. on a GPU machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

sys.path.insert(0, str(ROOT / "bench"))

from comfy_server import ComfyServer  # noqa: E402
from ksampler_parity_inprocess import passing, table, write_models  # noqa: E402
from test_comfyui import latents_of, run_ok  # noqa: E402
from test_ksampler_parity import (  # noqa: E402
    PARITY_SAMPLERS,
    PARITY_SCHEDULERS,
    STEPS,
    add_pair,
    add_reordered,
    parity_base,
)

logger = logging.getLogger("ksampler_parity")

CACHE = ROOT / "bench" / "cache"
RESULTS = ROOT / "bench" / "results"
MODELS = {"model": "AltDiffusion-m9-fullunet", "unet": "altdiffusion_m9_unet.safetensors"}


def measure(server: ComfyServer, sampler: str, schedulers: list[str], steps: int, seed: int, cfg: float) -> list[dict]:
    """One graph: a KSampler/ours pair per scheduler; one row per pair."""
    graph = parity_base(MODELS)
    saves = {
        s: (*add_pair(graph, str(i), ("E", 0), sampler, s, steps=steps, seed=seed, cfg=cfg), add_reordered(graph, str(i)))
        for i, s in enumerate(schedulers)
    }
    started = time.monotonic()
    result = run_ok(server, graph, timeout=3600)
    seconds = time.monotonic() - started
    rows = []
    for scheduler, (theirs, ours, reordered) in saves.items():
        (a,) = latents_of(server, result, theirs)
        (b,) = latents_of(server, result, ours)
        (c,) = latents_of(server, result, reordered)
        rows.append(
            {
                "sampler": sampler,
                "scheduler": scheduler,
                "max_abs_diff": (a - b).abs().max().item(),
                "ksampler_vs_reordered": (a - c).abs().max().item(),
                "ksampler_max_abs": a.abs().max().item(),
                "ksampler_std": a.std().item(),
            }
        )
    logger.info("%s: %d schedulers in %.0f s", sampler, len(schedulers), seconds)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samplers", default=",".join(PARITY_SAMPLERS))
    parser.add_argument("--schedulers", default=",".join(PARITY_SCHEDULERS))
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "ksampler_parity.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    samplers, schedulers = args.samplers.split(","), args.schedulers.split(",")
    base = CACHE / "models"
    write_models(base)
    paths = {name: [base / name] for name in ("altdiffusion", "diffusion_models")}
    rows: list[dict] = []
    (CACHE / "comfyui" / "custom_nodes").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "tests" / "comfy_test_nodes" / "altdiffusion_test_nodes.py", CACHE / "comfyui" / "custom_nodes")
    with ComfyServer(ROOT, CACHE / "comfyui", model_paths=paths) as server:
        for sampler in samplers:
            rows += measure(server, sampler, schedulers, args.steps, args.seed, args.cfg)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    text = table(rows, samplers, schedulers)
    args.out.write_text(text + "\n", encoding="utf-8")
    print(text)  # noqa: T201
    return 0 if all(r["max_abs_diff"] <= passing(r) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
