"""Where one CPU UNet step goes against the floor: the matrix multiplies at the machine's matmul rate, and the rest.

    python bench/unet_profile.py [--size 256] [--dtype fp32] [--calls 3] [--out bench/reports/NAME.md]

Builds a full-size SD1 UNet (AltDiffusion m2/m9's: 860 M parameters, random weights; a step's time does not depend on
the values) with the pack's CPU kernels and PyTorch's SDPA attention, as the loader builds it, and measures one CFG
step (batch 2, 77 tokens): the fastest of ``--calls`` calls, then one call under torch's profiler. The profile's self
times are grouped into the matrix multiplies (convolutions, linears, attention) and everything else (norms,
activations, residual adds, layout copies: memory-bound, a few FLOPs per byte), and each group is set against the
floor (pipeline_bench's: the UNet's FLOPs at the faster of ``torch.mm`` and oneDNN's linear at 2048²).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

logger = logging.getLogger("unet_profile")

SD1_UNET = {"block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 768, "attention_head_dim": 8}
"""The SD1 UNet config AltDiffusion m2/m9 use (diffusers' defaults for the rest)."""

MATMUL_OPS = {
    "convolution": ("mkldnn_convolution", "aten::convolution_overrideable", "aten::slow_conv"),
    "linear": ("_linear_pointwise", "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
    "attention": ("scaled_dot_product",),
}
"""Profiler op names of each matrix-multiply group (self time); every other op counts as memory-bound."""

FLOP_GROUPS = {
    "convolution": ("convolution",),
    "linear": ("_linear_pointwise", "mm", "addmm", "bmm", "baddbmm"),
    "attention": ("scaled_dot_product",),
}
"""FlopCounterMode op names of each group, counted on the model as it runs (the deep 3×3 convolutions that the CPU
kernels compute as one matrix multiply count as linears, in the FLOPs as in the profile)."""


def group_of(name: str, table: dict[str, tuple[str, ...]]) -> str | None:
    return next((group for group, parts in table.items() if any(part in name for part in parts)), None)


def flops_by_group(unet, x, t, context) -> dict[str, float]:
    import torch
    from pipeline_bench import _sdpa_cpu_flop
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flop,
        torch.ops.mkldnn._linear_pointwise: _onednn_linear_flop,
    }
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        unet(x, t, encoder_hidden_states=context)
    out: dict[str, float] = defaultdict(float)
    for op, n in counter.get_flop_counts()["Global"].items():
        out[group_of(str(op), FLOP_GROUPS) or "other"] += n
    return dict(out)


def _onednn_linear_flop(x_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of the pack's CPU linear (oneDNN's ``_linear_pointwise``, which FlopCounterMode has no formula for):
    ``2·rows·in·out``."""
    rows = 1
    for size in x_shape[:-1]:
        rows *= size
    return 2 * rows * weight_shape[0] * weight_shape[1]


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (latent = size/8)")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the report (markdown) here as well")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0
    from pipeline_bench import matmul_rates
    from torch.profiler import ProfilerActivity, profile

    from altdiff_core.cpu_kernels import onednn_is_faster, use_cpu_kernels

    torch.set_grad_enabled(False)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD1_UNET).eval().to(dtype)
    unet.set_attn_processor(AttnProcessor2_0())
    side = args.size // 8
    x = torch.randn(2, 4, side, side, dtype=dtype)
    t = torch.full((2,), 500.0)
    context = torch.randn(2, 77, 768, dtype=dtype)
    use_cpu_kernels(unet)
    onednn_is_faster(dtype)  # the linear probe's own calls must not be counted as the UNet's FLOPs
    flops = flops_by_group(unet, x, t, context)
    _, rates = matmul_rates(dtype, "cpu")
    rate_op = max(rates, key=rates.get)
    rate = rates[rate_op]
    unet(x, t, context)  # oneDNN builds its kernels on the first call
    step = min(_timed(lambda: unet(x, t, context)) for _ in range(args.calls))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        unet(x, t, context)
    self_us: dict[str, float] = defaultdict(float)
    ops: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for event in prof.key_averages():
        group = group_of(event.key, MATMUL_OPS) or "memory-bound"
        self_us[group] += event.self_cpu_time_total
        ops[group][event.key] += event.self_cpu_time_total
    profiled = sum(self_us.values()) / 1e6
    total_flops = sum(flops.values())
    floor = total_flops / rate
    lines = [
        f"# One CPU UNet step against the floor ({datetime.date.today()})",
        "",
        f"`python bench/unet_profile.py --size {args.size} --dtype {args.dtype} --calls {args.calls}`; SD1 UNet (m2/m9), "
        f"CFG batch 2, {side}×{side} latent, 77 tokens, the pack's CPU kernels + SDPA; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, ATen {torch.backends.cpu.get_cpu_capability()}.",
        "",
        f"- step (fastest of {args.calls}): **{step:.3f} s**; profiled call {profiled:.3f} s (the profiler adds a little)",
        f"- FLOPs: {total_flops / 1e9:.0f} G ({', '.join(f'{g} {n / 1e9:.0f}' for g, n in sorted(flops.items()))})",
        f"- floor rate: {rate / 1e9:.0f} GFLOP/s ({rate_op}, 2048²) → floor {floor:.3f} s; **step/floor {step / floor:.2f}×**",
        "",
        "| group | share of the profiled call | seconds (scaled to the step) | GFLOP | GFLOP/s | × the floor's rate |",
        "|---|---|---|---|---|---|",
    ]
    for group in (*MATMUL_OPS, "memory-bound"):
        seconds = self_us[group] / 1e6 * step / profiled
        gflop = flops.get(group, 0.0) / 1e9
        rate_cell = f"{gflop / seconds:.0f}" if gflop and seconds else "–"
        slow = f"{rate / 1e9 / (gflop / seconds):.2f}" if gflop and seconds else "–"
        lines.append(f"| {group} | {self_us[group] / 1e6 / profiled:.1%} | {seconds:.3f} | {gflop:.1f} | {rate_cell} | {slow} |")
    memory = self_us["memory-bound"] / 1e6 * step / profiled
    lines += [
        "",
        f"With the memory-bound ops free the step would be {(step - memory) / floor:.2f}× the floor; they alone cost "
        f"{memory / floor:.2f}× the floor.",
        "",
        "Largest memory-bound ops (self time, share of the profiled call):",
        "",
    ]
    for name, us in sorted(ops["memory-bound"].items(), key=lambda kv: -kv[1])[:12]:
        lines.append(f"- `{name}` {us / 1e6 / profiled:.1%}")
    report = "\n".join(lines) + "\n"
    sys.stdout.write(report)
    if args.out:
        args.out.write_text(report, encoding="utf-8")
        logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
