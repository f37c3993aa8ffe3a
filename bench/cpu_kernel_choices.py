"""The three CPU kernel choices the pack makes, measured on this machine, so a rule can be checked on another CPU kind.

    python bench/cpu_kernel_choices.py [--out report.md]
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 python bench/cpu_kernel_choices.py

1. Linears: oneDNN's ``_linear_pointwise`` against ``F.linear`` (MKL) at the UNet's shapes at 256² (CFG batch 2).
   The pack no longer fixes this one: ``cpu_kernels.onednn_is_faster`` times it on each machine.
2. The deep 3×3 convolutions (≥ ``MIN_CHANNELS`` in, ≤ ``MAX_PIXELS`` out) as unfold + one matrix multiply
   (``cpu_kernels.small_image_conv``) against the convolution (oneDNN), and where the thresholds fall.
3. The SD VAE's decode with its input channels-last (``vae_stage.CPU_MEMORY_FORMAT``) against contiguous (NCHW).

Times are the fastest of ``--rounds`` interleaved calls (a busy neighbour only adds time); ratios below 1 favour the
pack's choice. The caps in the second command make an AVX512 CPU compute as an AVX2-only one in oneDNN, ATen and MKL.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LINEAR_SHAPES = [(2048, 320, 2560), (2048, 320, 320), (512, 640, 640), (512, 640, 5120), (128, 1280, 1280),
                 (128, 1280, 10240), (154, 768, 320), (1024, 640, 640)]  # fmt: skip
"""(rows, in, out): the UNet's largest linears at 256² with CFG (2048 rows = 2 × 32²), and the probe's shape last."""

CONV_CASES = [(1280, 8), (1280, 4), (2560, 8), (640, 8), (1280, 16)]
"""(input channels, side): the two last are outside the thresholds (640 < ``MIN_CHANNELS``, 256 > ``MAX_PIXELS``)."""


def fastest(calls: dict, rounds: int) -> dict[str, float]:
    """Seconds per call of each of ``calls`` (name → function): one untimed call each, then the fastest of ``rounds``
    interleaved ones."""
    best = dict.fromkeys(calls, float("inf"))
    for call in calls.values():
        call()
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def linears(rounds: int) -> list[str]:
    import torch

    from altdiff_core.cpu_kernels import onednn_linear_op, time_linears

    lines = [
        "| dtype | rows × in → out | F.linear GFLOP/s | oneDNN GFLOP/s | oneDNN time / F.linear's |",
        "|---|---|---|---|---|",
    ]
    for dtype in (torch.float32, torch.bfloat16):
        op = onednn_linear_op(dtype)
        name = str(dtype).removeprefix("torch.")
        if op is None:
            lines.append(f"| {name} | – | – | no oneDNN kernel | – |")
            continue
        for rows, cin, cout in LINEAR_SHAPES:
            onednn, mkl = time_linears(op, dtype, (rows, cin, cout), rounds)
            flop = 2 * rows * cin * cout
            lines.append(f"| {name} | {rows} × {cin} → {cout} | {flop / mkl / 1e9:.0f} | {flop / onednn / 1e9:.0f} "
                         f"| {onednn / mkl:.2f} |")  # fmt: skip
    return lines


def convolutions(rounds: int) -> list[str]:
    import torch

    from altdiff_core import cpu_kernels

    lines = [
        "| in channels, side (batch 2) | convolution ms | matmul form ms | matmul / convolution | the rule takes |",
        "|---|---|---|---|---|",
    ]
    for channels, side in CONV_CASES:
        x = torch.randn(2, channels, side, side)
        t = _conv_times(cpu_kernels.SmallImageConv2d(channels, 1280, 3, padding=1).eval(), x, rounds)
        rule = "matmul" if cpu_kernels.uses_matmul(x, side * side) else "convolution"
        lines.append(f"| {channels}, {side}×{side} | {t['conv'] * 1e3:.1f} | {t['matmul'] * 1e3:.1f} | "
                     f"{t['matmul'] / t['conv']:.2f} | {rule} |")  # fmt: skip
    return lines


def _conv_times(conv, x, rounds: int) -> dict[str, float]:
    """The convolution and its matmul form, the latter forced past the thresholds (to show where they fall)."""
    from unittest import mock

    import torch

    from altdiff_core import cpu_kernels

    def matmul_form():
        with mock.patch.multiple(cpu_kernels, MIN_CHANNELS=1, MAX_PIXELS=2**62):
            return cpu_kernels.small_image_conv(conv, x, conv.weight, conv.bias)

    return fastest({"conv": lambda: torch.nn.Conv2d.forward(conv, x), "matmul": matmul_form}, rounds)


def vae_decode(rounds: int, side: int) -> list[str]:
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2, latent_channels=4,
    ).eval()  # fmt: skip
    z = torch.randn(1, 4, side // 8, side // 8)
    zl = z.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        t = fastest({"nchw": lambda: vae.decode(z).sample, "channels_last": lambda: vae.decode(zl).sample}, rounds)
    return [
        "| image | NCHW s | channels-last s | channels-last / NCHW |",
        "|---|---|---|---|",
        f"| {side}² | {t['nchw']:.2f} | {t['channels_last']:.2f} | {t['channels_last'] / t['nchw']:.2f} |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--vae-size", type=int, default=384)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import torch

    caps = {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS") if k in os.environ}
    torch.set_grad_enabled(False)
    lines = [
        f"# CPU kernel choices ({datetime.datetime.now().isoformat(timespec='seconds')})",
        "",
        f"`python bench/cpu_kernel_choices.py`; torch {torch.__version__}, {torch.get_num_threads()} threads, ATen "
        f"{torch.backends.cpu.get_cpu_capability()}, caps: {caps or 'none'}; load average before "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}. Fastest of {args.rounds} interleaved calls.",
        "",
        "## Linears",
        "",
        *linears(args.rounds),
        "",
        "## Deep 3×3 convolutions as one matrix multiply",
        "",
        *convolutions(args.rounds),
        "",
        "## VAE decode, channels-last input",
        "",
        *vae_decode(max(2, args.rounds // 2), args.vae_size),
    ]
    report = "\n".join(lines) + "\n"
    sys.stdout.write(report)
    if args.out:
        args.out.write_text(report, encoding="utf-8")


if __name__ == "__main__":
    main()
