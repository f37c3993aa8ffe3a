"""Memory of a ComfyUI server whose prompts alternate between two full-size AltDiffusion models (issue 14, part 6).

A user ran m9, m18, m9, … in one server: every prompt loads its model again (the pack's ``MODEL_CACHE`` keeps one),
the outputs stay the same, but the server's resident memory swung by 1.5 GB from one switch to the next and its peak
drifted up by 6 % over 60 prompts. This script replays that in a real ComfyUI 0.3.75 (``tests/comfy_server.py``) with
two random models whose UNets are full size — an m9-shaped SD1 UNet and an m18-shaped SD2.1-base UNet, 860 M
parameters each — and, by default, the tiny text encoder and VAE of the test fixtures (``tests/factories.py``; the
``comfy_models`` fixture of ``tests/conftest.py`` builds its full-size UNet folder the same way; ``--full all`` makes
XLM-R large and the SD VAE full size too, about 15 s a prompt here). The files are pickled fp32 ``.bin`` files as the
m9 repository's main branch ships them (``--weights safetensors``: fp16 safetensors). The graph is the soak test's
(``tests/test_soak.py``: Loader → Text Encode ×2 → Sampler → VAE Decode, saving latent and image) at 64×64 px.

Measured per prompt, from ``/proc/<server pid>/status``:

- ``rss_mb``: ``VmRSS`` once the prompt finished (what the user sampled);
- ``peak_mb``: the highest resident set during the prompt: ``VmHWM``, reset before the prompt by writing 5 to
  ``/proc/<pid>/clear_refs`` (Linux ≥ 4.0); where that reset is refused, the largest ``VmRSS`` a thread read every
  20 ms;

and every ``--probe-every`` prompts a probe node (``AltDiffusionTestProbe`` of ``tests/comfy_test_nodes/``) reports, without
collecting garbage, the UNets alive in the server, ComfyUI's ``current_loaded_models`` and glibc's ``mallinfo2``:
bytes in its heaps (``arena``), how much of that is free (``fordblks``), bytes in its own mmaps (``hblkhd``). Every
output is compared with that model's first: memory must not be bought with different images. The server log's
"(loaded in X s)" lines count the loads (one per prompt: each is a switch).

The bound checked: the peak over the whole run, and the largest resident set after a prompt, each within
``--tolerance`` (5 %) of the same over the first 10 prompts. Usage (in the test venv, from the pack's folder)::

    python bench/alternating_memory.py                      # 100 prompts, fp32, 2 steps: 8–17 min on the 2-core VM
    python bench/alternating_memory.py --dtype auto         # bf16 on a CPU with AVX512-BF16, where the drift showed
    python bench/alternating_memory.py --prompts 6          # a quick check of the script itself

What it found (``bench/reports/cpu-2core-2026-12-02-alternating_memory_*``): no switched-away model stays alive (one
UNet alive at every probe; ComfyUI's classic cache drops the old loader's outputs before the next prompt runs and its
``current_loaded_models`` holds weak references); the memory stayed in glibc's heaps. Loading an fp32 ``.bin`` as
bf16 (``auto`` on this CPU) reads it whole, casts, and frees the fp32 copy: with the previous model's freed weights
that left 2.7 GiB free but resident beside a 1.6 GiB UNet (RSS after a prompt 2.9 GiB after the first, 5.4 GiB from
the fourth on). ``nodes/model_cache.release_free_memory`` (``malloc_trim``) after each load gives it back: 2.7–2.8 GiB
after every prompt, in-prompt peak unchanged (6.0 GiB: the fp32 copy during the load), but each load faults its pages
in afresh (median load 3.5 → 5.9 s on the shared 2-core VM). In fp32 nothing is cast and the heap is reused as it
is: 4.4 GiB flat before and after.

The models are written once into ``--cache`` (default ``$ALTDIFF_BENCH_MODELS``, else ``bench/cache/models``; about a
minute each). Results: ``bench/reports/cpu-<CPUs>core-<date>-alternating_memory_<dtype>_<full>_<weights>[_<label>]``
``.json`` and ``.md``, rewritten every 10 prompts so a run cut short keeps what it measured (``--render`` rewrites the
``.md`` of a ``.json``). Exit status 1 when the bound or an output check fails.
"""

from __future__ import annotations

import argparse
import datetime
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
MODELS = {  # name under models/altdiffusion → (variant, UNet family in tests/factories.py, seed)
    "AltDiffusion-m9-fullunet": ("m9", "sd1", 0),
    "AltDiffusion-m18-fullunet": ("m18", "sd21", 1),
}
PARTS = {"unet": "full-size UNets, tiny text encoder and VAE", "all": "full-size text encoders, UNets and VAEs"}
FIRST = 10
"""The bound compares the run's peak with the peak over this many first prompts."""
MAX_SERVER_MB = 18 * 1024
"""The run stops when the server's resident set passes this (a 24 GB machine shared with others)."""

logger = logging.getLogger("alternating_memory")



# ----------------------------------------------------------------------------------------------- the models


def ensure_models(cache: Path, weights: str = "safetensors", full: str = "unet") -> Path:
    """Write each model of ``MODELS`` into ``cache/altdiffusion-<full>-<weights>`` once and return that folder.

    ``full`` "unet": a full-size UNet with the tiny text encoder and VAE (as the ``comfy_models`` test fixture);
    "all": XLM-R large, the UNet and the SD VAE all full size (as ``bench/pipeline_bench.py``'s m9).
    ``weights`` "safetensors": fp16 files, the UNet written once into ``cache/unets`` and linked into the folder;
    "bin": pickled fp32 files, as the m9 repository's main branch ships them.
    """
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from factories import write_altdiffusion_folder, write_component_file

    root = cache / f"altdiffusion-{full}-{weights}"
    size = "full" if full == "all" else "tiny"
    for name, (variant, family, seed) in MODELS.items():
        folder = root / name
        if (folder / "model_index.json").is_file():
            continue
        partial = folder.with_name(folder.name + ".tmp")  # renamed when complete: a killed run leaves no half folder
        logger.info("writing %s (full size: %s; %s) into %s (a minute or two)", name, full, weights, folder)
        if weights == "bin":
            write_altdiffusion_folder(partial, variant, weights="bin", size=size, unet_size="full", seed=seed)
        else:
            unet = cache / "unets" / f"{name}-unet.safetensors"
            if not unet.is_file():
                unet.parent.mkdir(parents=True, exist_ok=True)
                write_component_file(unet.with_suffix(".tmp"), "unet", family=family, seed=seed, dtype=torch.float16)
                unet.with_suffix(".tmp").rename(unet)
            write_altdiffusion_folder(partial, variant, size=size, unet_size="full", seed=seed, dtype=torch.float16,
                                      unet_file=unet)  # fmt: skip
        partial.rename(folder)
    return root


# ----------------------------------------------------------------------------------------------- measuring


def _status_kb(pid: int) -> dict[str, int]:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":", 1)
                fields[name] = int(value.split()[0])
    return fields


class PeakMeter:
    """The peak resident set of process ``pid`` between ``reset()`` and ``peak_mb()``: the kernel's ``VmHWM`` after
    resetting it through ``clear_refs``, else (reset refused) the largest ``VmRSS`` a thread samples every 20 ms."""

    def __init__(self, pid: int, interval: float = 0.02):
        self.pid = pid
        self.interval = interval
        self.hwm_resets = True
        self._sampled = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True, name="rss-sampler")
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._sampled = max(self._sampled, _status_kb(self.pid)["VmRSS"])
            except (OSError, KeyError):
                return

    def reset(self) -> None:
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError as err:
            if self.hwm_resets:
                logger.warning("cannot reset VmHWM (%s); peaks are sampled every %.0f ms", err, 1000 * self.interval)
            self.hwm_resets = False
        self._sampled = _status_kb(self.pid)["VmRSS"]

    def peak_mb(self) -> float:
        status = _status_kb(self.pid)
        kb = status["VmHWM"] if self.hwm_resets else max(self._sampled, status["VmRSS"])
        return kb / 1024

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


LOAD_LINE = re.compile(r" from (?P<path>.+?): (?P<dtype>\w+) on (?P<device>\w+);.*\(loaded in (?P<seconds>[\d.]+) s\)")


def loads_in_log(log: str) -> dict:
    """The loader's "… from <path>: <dtype> on <device>; … (loaded in X s)" lines in the server log: how many loads,
    in which dtype, and their median time."""
    found = [m for m in map(LOAD_LINE.search, log.splitlines()) if m]
    return {
        "count": len(found),
        "dtypes": sorted({m["dtype"] for m in found}),
        "median_s": round(statistics.median(float(m["seconds"]) for m in found), 2) if found else None,
    }


def summarize(prompts: list[dict], tolerance: float) -> dict:
    """The bound (peak over the run within ``tolerance`` of the peak over the first ``FIRST`` prompts), checked on the
    in-prompt peaks (VmHWM) and on the resident set after each prompt (what the user sampled)."""
    peaks = [p["peak_mb"] for p in prompts]
    rss = [p["rss_mb"] for p in prompts]
    later = rss[FIRST:] or rss
    peak_drift = max(peaks) / max(peaks[:FIRST]) - 1
    rss_drift = max(rss) / max(rss[:FIRST]) - 1
    return {
        "prompts": len(prompts),
        "peak_first_mb": round(max(peaks[:FIRST]), 1),
        "peak_overall_mb": round(max(peaks), 1),
        "peak_overall_at": peaks.index(max(peaks)) + 1,
        "peak_drift_pct": round(100 * peak_drift, 2),
        "rss_first_max_mb": round(max(rss[:FIRST]), 1),
        "rss_overall_max_mb": round(max(rss), 1),
        "rss_drift_pct": round(100 * rss_drift, 2),
        "rss_median_after_first_mb": round(statistics.median(later), 1),
        "rss_swing_after_first_mb": round(max(later) - min(later), 1),
        "tolerance_pct": 100 * tolerance,
        "bound_holds": peak_drift <= tolerance and rss_drift <= tolerance,
        "outputs_identical": all(p["same_output"] for p in prompts),
        "median_prompt_s": round(statistics.median(p["seconds"] for p in prompts), 2),
    }


def markdown(report: dict) -> str:
    s, env, loads = report["summary"], report["environment"], report.get("loads", {})
    lines = [
        f"# Alternating models in one ComfyUI server: {s['prompts']} prompts, {env['dtype']}",
        "",
        f"{env['when']}, {env['machine']}, torch {env['torch']}, ComfyUI 0.3.75; models: {', '.join(env['models'])} "
        f"({PARTS[env['full']]}; {env['weights']} files); {env['size']}×{env['size']} px, {env['steps']} "
        f"steps; peaks from {'VmHWM (reset per prompt)' if env['hwm_resets'] else 'VmRSS sampled every 20 ms'}; "
        f"wall {report['wall_s']:.0f} s." + (f" {env['note']}" if env.get("note") else ""),
        "",
        f"- peak over the first {FIRST} prompts: **{s['peak_first_mb']:.0f} MiB**; over the run: **{s['peak_overall_mb']:.0f}"
        f" MiB** (prompt {s['peak_overall_at']}): **{s['peak_drift_pct']:+.2f} %** (bound +{s['tolerance_pct']:.0f} %: "
        f"{'holds' if s['bound_holds'] else 'FAILS'})",
        f"- RSS after a prompt: max {s['rss_first_max_mb']:.0f} MiB over the first {FIRST}, {s['rss_overall_max_mb']:.0f}"
        f" MiB over the run: **{s['rss_drift_pct']:+.2f} %**; after prompt {FIRST}: median "
        f"{s['rss_median_after_first_mb']:.0f} MiB, swinging by {s['rss_swing_after_first_mb']:.0f} MiB",
        f"- median prompt {s['median_prompt_s']:.1f} s; the server loaded a model {loads.get('count')} times "
        f"(as {', '.join(loads.get('dtypes', []))}; median {loads.get('median_s')} s)",
        f"- outputs identical to each model's first: {'yes' if s['outputs_identical'] else 'NO'}",
        "",
        "| prompt | model | RSS after MiB | peak MiB | s |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {p['index']} | {p['model']} | {p['rss_mb']:.0f} | {p['peak_mb']:.0f} | {p['seconds']:.1f} |"
        for p in report["prompts"]
    ]
    if report["probes"]:
        keys = list(report["probes"][0]["counts"])
        lines += [
            "",
            "Probes (no garbage collection; bytes in MiB; malloc_* from glibc's mallinfo2, whose fordblks counts free "
            "heap bytes whether their pages are resident or were given back by malloc_trim):",
            "",
        ]
        lines += ["| after prompt | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for probe in report["probes"]:
            values = [v / 2**20 if k.startswith(("malloc_", "unet_weight")) else v for k, v in probe["counts"].items()]
            lines.append(f"| {probe['after']} | " + " | ".join(f"{v:.0f}" for v in values) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- the run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--dtype", default="fp32", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--probe-every", type=int, default=10, help="0: no probes")
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--weights", default="bin", choices=["bin", "safetensors"], help="the models' files")
    parser.add_argument("--full", default="unet", choices=["unet", "all"],
                        help="full-size parts: the UNet (tiny text encoder and VAE) or all three")  # fmt: skip
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--reports", type=Path, default=REPORTS)
    parser.add_argument("--label", default="", help="added to the report's file name")
    parser.add_argument("--work", type=Path, help="the server's scratch folder (kept; default: a temporary one)")
    parser.add_argument("--note", default="", help="a sentence for the report (what was run, which tree)")
    parser.add_argument("--render", type=Path, help="only rewrite this report's .md (and summary) from its .json")
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)  # child: write the models
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    if args.render:
        report = json.loads(args.render.read_text(encoding="utf-8"))
        report["summary"] = summarize(report["prompts"], report["summary"]["tolerance_pct"] / 100)
        args.render.write_text(json.dumps(report, indent=1), encoding="utf-8")
        args.render.with_suffix(".md").write_text(markdown(report), encoding="utf-8")
        return 0

    if args.prepare:
        ensure_models(args.cache, args.weights, args.full)
        return 0
    # The models are built in a child process, so that this one stays small beside the server it measures.
    command = [sys.executable, __file__, "--prepare", "--cache", str(args.cache), "--weights", args.weights, "--full", args.full]
    subprocess.run(command, check=True, cwd=ROOT)

    sys.path.insert(0, str(ROOT / "tests"))
    runpy.run_path(str(ROOT / "__main__.py"), run_name="bootstrap")["load_pack"](ROOT)  # test_soak's helpers need it
    import torch
    from comfy_server import ComfyServer
    from test_comfyui import latents_of
    from test_soak import Combo, graph

    combos = [
        Combo(f"alt-{variant}", name, "一只戴着帽子的猫", seed, size=(args.size, args.size), dtype=args.dtype, steps=args.steps)
        for name, (variant, _, seed) in MODELS.items()
    ]
    stem = f"cpu-{os.cpu_count()}core-{datetime.date.today()}-alternating_memory_{args.dtype}_{args.full}_{args.weights}"
    stem += f"_{args.label}" if args.label else ""
    args.reports.mkdir(parents=True, exist_ok=True)
    report = {
        "environment": {
            "when": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
            "torch": torch.__version__,
            "dtype": args.dtype,
            "steps": args.steps,
            "size": args.size,
            "models": list(MODELS),
            "weights": args.weights,
            "full": args.full,
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "note": args.note,
        },
        "prompts": [],
        "probes": [],
    }

    def save() -> None:
        report["summary"] = summarize(report["prompts"], args.tolerance)
        (args.reports / f"{stem}.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
        (args.reports / f"{stem}.md").write_text(markdown(report), encoding="utf-8")

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="alternating_memory_") as scratch:
        work = args.work or scratch
        (Path(work) / "custom_nodes").mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "tests" / "comfy_test_nodes" / "altdiffusion_test_nodes.py", Path(work) / "custom_nodes")
        paths = {"altdiffusion": [args.cache / f"altdiffusion-{args.full}-{args.weights}"]}
        with ComfyServer(ROOT, Path(work), model_paths=paths) as server:
            meter = PeakMeter(server.pid)
            report["environment"]["server_start_rss_mb"] = round(_status_kb(server.pid)["VmRSS"] / 1024, 1)
            firsts: dict[str, tuple] = {}
            try:
                for index in range(1, args.prompts + 1):
                    combo = combos[(index - 1) % len(combos)]
                    meter.reset()
                    t0 = time.monotonic()
                    result = server.run(graph(combo), timeout=600)
                    seconds = time.monotonic() - t0
                    peak = meter.peak_mb()
                    rss = _status_kb(server.pid)["VmRSS"] / 1024
                    if result.status_str != "success":
                        raise RuntimeError(f"prompt {index} failed: {result.error}\n{server.log_tail()}")
                    output = (latents_of(server, result, "SL")[0], result.images("SI")[0])
                    first = firsts.setdefault(combo.model, output)
                    same = torch.equal(first[0], output[0]) and (first[1] == output[1]).all()
                    report["prompts"].append({"index": index, "model": combo.model, "rss_mb": round(rss, 1),
                                              "peak_mb": round(peak, 1), "seconds": round(seconds, 2),
                                              "same_output": bool(same)})  # fmt: skip
                    logger.info("prompt %d %s: RSS %.0f MiB, peak %.0f MiB, %.1f s%s", index, combo.model, rss, peak,
                                seconds, "" if same else ", OUTPUT DIFFERS")  # fmt: skip
                    if args.probe_every and index % args.probe_every == 0:
                        probe = {"class_type": "AltDiffusionTestProbe", "inputs": {"nonce": index, "collect": False}}
                        answer = server.run({"Q": probe})
                        counts = json.loads(answer.outputs["Q"]["text"][0])
                        report["probes"].append({"after": index, "counts": counts})
                        logger.info("probe after %d: %s", index, counts)
                    if index % 10 == 0 or index == args.prompts:
                        report["wall_s"] = time.monotonic() - started
                        report["environment"]["hwm_resets"] = meter.hwm_resets
                        save()
                    if max(peak, rss) > MAX_SERVER_MB:
                        logger.error("the server passed %d MiB; stopping", MAX_SERVER_MB)
                        break
            finally:
                meter.close()
                report["loads"] = loads_in_log(server.log_text())
    report["wall_s"] = time.monotonic() - started
    report["environment"]["hwm_resets"] = meter.hwm_resets
    save()
    summary = report["summary"]
    logger.info("%s", json.dumps(summary))
    logger.info("report: %s.{json,md}", args.reports / stem)
    return 0 if summary["bound_holds"] and summary["outputs_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
