#!/usr/bin/env bash
# bash scripts/offline_bundle.sh DIR [--python-version 3.12]
#
# Packs what `bash scripts/gpu_smoke.sh --bundle DIR` needs on an air-gapped GPU node that has a
# PyTorch image but no package index: wheels of the packages in scripts/offline_bundle.txt (for
# CPython --python-version on manylinux x86_64; DeepSpeed and antlr4, published as source only,
# are built into pure-Python wheels here, DeepSpeed without precompiled ops) and the tiny random
# model of the smoke run with the embedded tokenizer (so the node needs neither the embedded model
# package nor gguf). Run it where PyPI is reachable, with this repo's environment active.
set -euo pipefail

cd "$(dirname "$0")/.."
DIR=""
PYVER="3.12"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --python-version) PYVER="${2:?--python-version needs a version, e.g. 3.12}"; shift 2 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        -*) echo "offline_bundle: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) DIR="$1"; shift ;;
    esac
done
[[ -n "$DIR" ]] || { echo "usage: bash scripts/offline_bundle.sh DIR [--python-version 3.12]" >&2; exit 2; }
PY="${PYTHON:-$(command -v python || command -v python3)}"
mkdir -p "$DIR/wheels"
WHEELS="$(cd "$DIR/wheels" && pwd)"
rm -f "$WHEELS"/*.whl

mapfile -t PINS < <(grep -v '^\s*#' scripts/offline_bundle.txt | grep -v '^\s*$')
SOURCE_ONLY=()
BINARY=()
for pin in "${PINS[@]}"; do
    case "${pin%%==*}" in
        deepspeed|antlr4-python3-runtime) SOURCE_ONLY+=("$pin") ;;
        *) BINARY+=("$pin") ;;
    esac
done

PLATFORMS=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
        manylinux2014_x86_64 manylinux1_x86_64; do
    PLATFORMS+=(--platform "$tag")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    "${PLATFORMS[@]}" -d "$WHEELS" "${BINARY[@]}"
# Source-only packages: pure Python once built. DeepSpeed's build imports torch (no isolation)
# and compiles no ops (DS_BUILD_OPS=0); on the node it JIT-builds the few it needs, if any.
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WHEELS" "${SOURCE_ONLY[@]}"

"$PY" -m deep_math.training.tiny "$DIR/tiny-model"
echo "offline_bundle: $(ls "$WHEELS" | wc -l) wheels for CPython $PYVER + tiny model in $DIR ($(du -sh "$DIR" | cut -f1))"
echo "offline_bundle: on the node: bash scripts/gpu_smoke.sh --bundle $DIR"
