"""Issue #8 in a real ComfyUI 0.3.75 server: a long run of mixed prompts, cancel at random steps, model files changed
between prompts, and bit-identical outputs across runs and a restart.

One module-scoped server with its own tiny models (not the session ``comfy``: these tests edit model folders and
restart the process). Its first process computes every reference output; the server is then restarted on the same
work dir, and every test compares what the second process makes, bit for bit, with those references. A reference is
"the same prompt run alone": each prompt of the first process follows a different prompt, so ComfyUI's output cache
never answers for the sampler, and the second process's prompts follow other prompts, in a random order.

The server runs with one OpenMP thread: on a 2-core machine shared with other processes, OpenMP's spin-waiting made a
two-thread step of the tiny UNet about 30× slower (0.7 s instead of 0.02 s; the references took 163 s instead of 6 s).

A test-only node (``AltDiffusionTestProbe`` of ``comfy_test_nodes/``, copied into this server's ``custom_nodes``)
counts the AltDiffusion models alive in the server process, so "at most one loaded copy" is checked in the process,
not guessed from outside.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from comfy_server import ComfyServer, PromptRejectedError, RunResult
from factories import WEIGHT_FILES, write_altdiffusion_folder
from graphs import encode, sampler, save_image, save_latent
from test_comfyui import latents_of, loads_in

ROOT = Path(__file__).resolve().parents[1]
TEST_NODES = Path(__file__).resolve().parent / "comfy_test_nodes" / "altdiffusion_test_nodes.py"
logger = logging.getLogger(__name__)

pytestmark = pytest.mark.comfyui

SERVER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
M9, M18 = "AltDiffusion-m9", "AltDiffusion-m18"
SWAPPED = "AltDiffusion-m9-swapunet"
"""m9 (seed 0) whose UNet weights are those of another m9 (seed 5): what the fault test's folder becomes."""
FAULT = "AltDiffusion-m9-fault"
"""Made, damaged, repaired and deleted by the fault test."""
UNET_WEIGHTS = Path("unet") / WEIGHT_FILES["safetensors"][1]
IMG_SQUARE, IMG_WIDE = "soak_init_square.png", "soak_init_wide.png"
RSS_TOLERANCE = 0.05
SOAK_PROMPTS = 100
PROBE_EVERY = 10


@dataclass(frozen=True)
class Combo:
    """One distinct prompt: model, dtype, text, size or init image, sampler settings."""

    name: str
    model: str
    text: str
    seed: int
    size: tuple[int, int] = (64, 64)  # width, height of the empty latent (txt2img)
    image: str | None = None  # an uploaded init image: img2img
    denoise: float = 1.0
    sampler_name: str = "euler"
    scheduler: str = "normal"
    dtype: str = "auto"
    steps: int = 3

    @property
    def key(self) -> tuple[str, torch.dtype]:
        """What the pack's model cache tells apart: the files and the dtype the choice means on this machine ("auto"
        is fp32 on a CPU without native bf16, so there it shares the fp32 combo's model)."""
        engine = sys.modules["comfyui_altdiffusion"].altdiff_core
        return (self.model, engine.resolve_dtype(self.dtype, torch.device("cpu")))


COMBOS = [
    Combo("m9-zh", M9, "一只戴着帽子的猫", 1),
    Combo("m9-en-tall", M9, "a lighthouse at dusk, oil painting", 2, (64, 96), sampler_name="dpmpp_2m", scheduler="karras"),
    Combo("m9-ja-wide", M9, "桜の木の下で眠る猫", 3, (96, 64), sampler_name="euler_ancestral"),
    Combo("m9-ko-img2img", M9, "바다 위의 등대", 4, image=IMG_SQUARE, denoise=0.6),
    Combo("m9-ar-img2img", M9, "قطة تحت المطر", 5, image=IMG_WIDE, denoise=0.75, sampler_name="dpmpp_2m", scheduler="karras"),
    Combo("m9-es-fp32", M9, "un gato con sombrero", 6, dtype="fp32"),
    Combo("m18-ru", M18, "кошка в шляпе", 7),
    Combo("m18-fr-wide", M18, "un phare au crépuscule", 8, (96, 64), sampler_name="dpmpp_2m", scheduler="karras"),
    Combo("m18-hi-img2img", M18, "टोपी पहने एक बिल्ली", 9, image=IMG_SQUARE, denoise=0.6),
    Combo("m18-th-tall", M18, "แมวใส่หมวก", 10, (64, 96), sampler_name="euler_ancestral"),
]
LONG = Combo("long", M9, "a cat in the snow", 99, steps=100)
"""The prompt the cancel test interrupts; its reference is a complete run."""
FAULT_BASE = COMBOS[0]
EXTRA = {"swapped": replace(FAULT_BASE, model=SWAPPED), "as-m18": replace(FAULT_BASE, model=M18), "long": LONG}
"""Reference-only prompts: the fault test's prompt on the models its folder turns into, and the uninterrupted LONG."""

# ----------------------------------------------------------------------------------------------- graphs and outputs


def graph(combo: Combo) -> dict:
    """Loader → encode → (empty latent | LoadImage → VAE encode) → sampler → decode; saves the latent and the image."""
    prefix = f"soak_{combo.name}"
    nodes = {
        "L": {"class_type": "AltDiffusionLoader", "inputs": {"model_name": combo.model, "dtype": combo.dtype}},
        "P": encode(combo.text),
        "N": encode("模糊, blurry"),
    }
    if combo.image is None:
        width, height = combo.size
        nodes["E"] = {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}}
    else:
        nodes["I"] = {"class_type": "LoadImage", "inputs": {"image": combo.image}}
        nodes["E"] = {"class_type": "AltDiffusionVAEEncode", "inputs": {"pixels": ["I", 0], "vae": ["L", 2]}}
    settings = {"sampler_name": combo.sampler_name, "scheduler": combo.scheduler, "denoise": combo.denoise}
    nodes["S1"] = sampler(["E", 0], seed=combo.seed, steps=combo.steps, **settings)
    nodes["D"] = {"class_type": "AltDiffusionVAEDecode", "inputs": {"samples": ["S1", 0], "vae": ["L", 2]}}
    nodes["SL"] = save_latent(["S1", 0], prefix)
    nodes["SI"] = save_image(["D", 0], prefix)
    return nodes


@dataclass
class Output:
    latent: torch.Tensor
    image: np.ndarray

    def equals(self, other: Output) -> bool:
        return torch.equal(self.latent, other.latent) and np.array_equal(self.image, other.image)


def cached_nodes(result: RunResult) -> set[str]:
    return {n for e in result.events if e["type"] == "execution_cached" for n in e["data"]["nodes"]}


def run_combo(server: ComfyServer, combo: Combo, timeout: float = 120) -> Output:
    """Run ``combo``; it must succeed and must have run its sampler (not answered it from ComfyUI's cache)."""
    result = server.run(graph(combo), timeout=timeout)
    assert result.status_str == "success", (combo.name, result.error, server.log_tail())
    assert "S1" not in cached_nodes(result), f"{combo.name}: the sampler's output came from ComfyUI's cache"
    (latent,) = latents_of(server, result, "SL")
    (image,) = result.images("SI")
    return Output(latent, image)


def probe(server: ComfyServer, nonce: int) -> dict:
    result = server.run({"Q": {"class_type": "AltDiffusionTestProbe", "inputs": {"nonce": nonce, "collect": True}}}, timeout=60)
    assert result.status_str == "success", (result.error, server.log_tail())
    return json.loads(result.outputs["Q"]["text"][0])


def model_path(server: ComfyServer, name: str) -> str:
    return (server.model_paths["altdiffusion"][0] / name).resolve().as_posix()


def no_repeats(rng: random.Random, count: int) -> list[Combo]:
    """``count`` combos drawn at random, never the same twice in a row (a repeat would be all cached by ComfyUI)."""
    order = [rng.choice(COMBOS)]
    while len(order) < count:
        order.append(rng.choice([c for c in COMBOS if c is not order[-1]]))
    return order


# ----------------------------------------------------------------------------------------------- the server


@dataclass
class Soak:
    server: ComfyServer
    refs: dict[str, Output]  # combo name → output of the first process
    second_pass: dict[str, Output]  # COMBOS run again in the first process, after every other combo
    first_pid: int


@pytest.fixture(scope="module")
def soak(tmp_path_factory):
    """The server after a restart, with the first process's reference outputs."""
    from PIL import Image

    models = tmp_path_factory.mktemp("soak_models") / "altdiffusion"
    write_altdiffusion_folder(models / M9, "m9", seed=0)
    write_altdiffusion_folder(models / M18, "m18", seed=1)
    other = write_altdiffusion_folder(tmp_path_factory.mktemp("soak_spare") / "m9-seed5", "m9", seed=5)
    write_altdiffusion_folder(models / SWAPPED, "m9", seed=0)
    shutil.copyfile(other / UNET_WEIGHTS, models / SWAPPED / UNET_WEIGHTS)

    work = tmp_path_factory.mktemp("soak_comfyui")
    (work / "custom_nodes").mkdir()
    shutil.copy(TEST_NODES, work / "custom_nodes")
    server = ComfyServer(ROOT, work, model_paths={"altdiffusion": [models]}, env=SERVER_ENV)
    with server:
        rng = np.random.default_rng(3)
        server.upload_image(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), name=IMG_SQUARE)
        server.upload_image(Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)), name=IMG_WIDE)
        started = time.monotonic()
        refs = {c.name: run_combo(server, c) for c in COMBOS}
        second_pass = {c.name: run_combo(server, c) for c in COMBOS}
        refs.update({name: run_combo(server, c) for name, c in EXTRA.items()})
        references = time.monotonic() - started
        first_pid = server.pid
        started = time.monotonic()
        server.restart()
        logger.info("references in %.1f s, restart in %.1f s", references, time.monotonic() - started)
        yield Soak(server, refs, second_pass, first_pid)


# ----------------------------------------------------------------------------------------------- 6: determinism


def test_outputs_are_bit_identical_across_runs_and_a_restart(soak):
    """Every combo (bf16 "auto" and fp32, m9 and m18, txt2img and img2img) gives the same latent and image bits twice in
    one process and again in a fresh process on the same work dir."""
    server = soak.server
    assert server.pid != soak.first_pid
    m9_loads = [line for line in server.log_text().splitlines() if f"from {model_path(server, M9)}:" in line]
    assert any("float32 on cpu" in line for line in m9_loads)  # the fp32 combo
    if sys.modules["comfyui_altdiffusion"].altdiff_core.precision.cpu_bf16_is_fast():
        assert any("bfloat16 on cpu" in line for line in m9_loads)  # "auto" on this CPU
    for combo in COMBOS:
        assert soak.second_pass[combo.name].equals(soak.refs[combo.name]), f"{combo.name} changed between two runs"
        after_restart = run_combo(server, combo)
        assert after_restart.equals(soak.refs[combo.name]), f"{combo.name} changed across a restart"


# ----------------------------------------------------------------------------------------------- 1: soak


def test_soak_outputs_memory_and_model_copies(soak):
    """100 prompts in a random order of the combos (m9 and m18 alternating, bf16 and fp32, txt2img and img2img,
    ten languages, three sizes): each output equals its reference bit for bit; resident memory after prompt 10 stays
    within 5% of its level there; each change of model reads it from disk exactly once and ComfyUI's memory manager
    loads each new copy once; the probe finds exactly one model alive between prompts."""
    server = soak.server
    count = SOAK_PROMPTS
    order = no_repeats(random.Random(8), count)
    rss = []
    probes = []
    log_start = len(server.log_text())
    started = time.monotonic()
    for index, combo in enumerate(order, start=1):
        output = run_combo(server, combo)
        assert output.equals(soak.refs[combo.name]), f"prompt {index} ({combo.name}) differs from its reference"
        rss.append(server.rss())
        if index == 1:
            log_start = len(server.log_text())  # the first prompt may or may not find its model in the pack's cache
        if index % PROBE_EVERY == 0:
            probes.append(probe(server, index))
    seconds = time.monotonic() - started
    log = server.log_text()[log_start:]

    mib = [r / 2**20 for r in rss]
    level = rss[9]
    deviation = max(abs(r - level) for r in rss[9:]) / level
    summary = (
        f"{count} prompts in {seconds:.1f} s; RSS MiB: at 10 {level / 2**20:.1f}, min {min(mib):.1f}, max {max(mib):.1f}, "
        f"final {mib[-1]:.1f}, max deviation after 10: {100 * deviation:.2f}%; series {[round(m, 1) for m in mib]}"
    )
    logger.info(summary)

    switches = {}
    for previous, combo in zip(order, order[1:], strict=False):
        if combo.key != previous.key:
            switches[combo.model] = switches.get(combo.model, 0) + 1
    loads = {name: loads_in(log, model_path(server, name)) for name in (M9, M18)}
    logger.info("loads %s, switches %s, probes %s", loads, switches, probes)
    assert loads == {name: switches.get(name, 0) for name in (M9, M18)}, summary
    for part in ("AltDiffusionClipModel", "BaseModel", "AutoencoderKL"):  # ComfyUI's own MODEL, CLIP and VAE
        requested = sum(1 for line in log.splitlines() if line.strip() == f"Requested to load {part}")
        assert requested == sum(loads.values()), (part, requested, loads)
    for counts in probes:
        assert counts["BaseModel"] == counts["AltDiffusionClipModel"] == counts["AutoencoderKL"] == 1, counts
        # no second copy: the engine's modules are dropped once ComfyUI's own hold the weights
        assert counts["pack_models"] == counts["UNet2DConditionModel"] == counts["XLMRobertaWithHead"] == 0, counts
        assert counts["ModelPatcher"] == counts["comfy_loaded_models"] == 3, counts
    assert deviation <= RSS_TOLERANCE, summary


# ----------------------------------------------------------------------------------------------- 2: cancel


def test_cancel_at_random_steps_leaves_nothing_half_made(soak):
    """20 times: LONG is interrupted at a random step 1..15; it stops within a few steps, saves nothing, and its sampler
    is not cached: run again at once (every 4th time) it samples from the start and equals an uninterrupted run. The
    next prompt (a different combo each time) equals its reference."""
    server = soak.server
    rng = random.Random(20)
    hits = []
    started = time.monotonic()
    for index in range(20):
        target = rng.randint(1, 15)
        state = {"pressed": None}

        def press_cancel(event, target=target, state=state):
            if event["type"] == "progress" and event["data"]["value"] >= target and state["pressed"] is None:
                state["pressed"] = event["data"]["value"]
                server.interrupt()

        result = server.run(graph(LONG), timeout=120, on_event=press_cancel)
        assert result.interrupted, (index, result.event_types(), server.log_tail())
        reached = max(e["data"]["value"] for e in result.events if e["type"] == "progress" and e["data"]["node"] == "S1")
        hits.append((target, state["pressed"], reached))
        assert reached < LONG.steps
        interrupted = next(e["data"] for e in result.events if e["type"] == "execution_interrupted")
        assert interrupted["node_id"] == "S1" and "S1" not in interrupted["executed"]
        assert not {"SL", "SI"} & set(result.outputs)
        if index % 4 == 3:
            again = server.run(graph(LONG), timeout=120)
            assert again.status_str == "success", (again.error, server.log_tail())
            assert "S1" not in cached_nodes(again)  # the half-made latent was not kept as the sampler's output
            progress = [e["data"]["value"] for e in again.events if e["type"] == "progress" and e["data"]["node"] == "S1"]
            assert progress[0] == 1 and progress[-1] == LONG.steps
            assert Output(latents_of(server, again, "SL")[0], again.images("SI")[0]).equals(soak.refs["long"])
        combo = COMBOS[index % len(COMBOS)]
        assert run_combo(server, combo).equals(soak.refs[combo.name]), f"after cancel {index}: {combo.name} differs"
    overshoot = [reached - target for target, _, reached in hits]
    logger.info("cancel (target, pressed at, last step) %s in %.1f s", hits, time.monotonic() - started)
    assert max(overshoot) <= 10, hits  # a few steps of latency at most (measured: none)


# ----------------------------------------------------------------------------------------------- 3: faults


def test_model_files_changed_between_prompts(soak):
    """One folder, the same prompt each time: a copy of m9 → m9's output; UNet weights truncated → an error naming the
    file; restored → m9's output again; replaced by other UNet weights of the same size → the new model's output
    (nothing stale from ComfyUI's cache or the pack's); the folder replaced by m18 → m18's output; the UNet weights
    deleted → an error naming the folder and the files looked for; the folder deleted → a validation error naming the
    model; then another model still works. The same server serves throughout."""
    server = soak.server
    models = server.model_paths["altdiffusion"][0]
    folder = models / FAULT
    weights = folder / UNET_WEIGHTS
    combo = replace(FAULT_BASE, model=FAULT)
    expected = soak.refs[FAULT_BASE.name]

    shutil.copytree(models / M9, folder)
    assert run_combo(server, combo).equals(expected)

    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    result = server.run(graph(combo))
    assert result.status_str == "error" and result.error["node_id"] == "L", result.event_types()
    assert result.error["exception_type"].endswith("ModelFormatError")
    message = result.error["exception_message"]
    assert str(weights.resolve()) in message and "truncated" in message, message

    weights.write_bytes(good)
    assert run_combo(server, combo).equals(expected)

    shutil.copyfile(models / SWAPPED / UNET_WEIGHTS, weights)  # same size, other weights
    swapped = server.run(graph(combo))
    assert swapped.status_str == "success" and not {"L", "S1"} & cached_nodes(swapped)
    output = Output(latents_of(server, swapped, "SL")[0], swapped.images("SI")[0])
    assert output.equals(soak.refs["swapped"]) and not output.equals(expected)

    shutil.rmtree(folder)
    shutil.copytree(models / M18, folder)  # another variant under the same name
    assert run_combo(server, combo).equals(soak.refs["as-m18"])

    weights.unlink()
    result = server.run(graph(combo))
    assert result.status_str == "error" and result.error["node_id"] == "L", result.event_types()
    message = result.error["exception_message"]
    assert str((folder / "unet").resolve()) in message and "no weight file" in message, message

    shutil.rmtree(folder)
    with pytest.raises(PromptRejectedError) as rejected:
        server.run(graph(combo))
    (error,) = rejected.value.body["node_errors"]["L"]["errors"]
    assert error["type"] == "value_not_in_list" and FAULT in error["details"], error

    after = COMBOS[6]
    assert run_combo(server, after).equals(soak.refs[after.name])
    assert server.running
