#!/usr/bin/env bash
# Re-vendor the golden fixtures our tests use from ../shared/golden into tests/golden.
# Everything is copied, debug.safetensors included: the STC-stage and audio
# waveform debug tensors let a test check one stage on its own (about 20 MB in all).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
src="${1:-$here/../shared/golden}"
dst="$here/tests/golden"
fixtures=(videollama2-mistral-tiny videollama2.1-qwen2-tiny videollama2.1-av-tiny video-llama-tiny minigpt4-video-tiny minigpt4-video-mistral-tiny video-chatgpt-tiny chat-univi-tiny ma-lmm-tiny qwen2-vl-tiny)
mkdir -p "$dst"
cp "$src/README.md" "$dst/README.md"
for f in "${fixtures[@]}"; do
  rm -rf "${dst:?}/$f"
  mkdir -p "$dst/$f"
  (cd "$src/$f" && find . -type f) | while read -r file; do
    case "$f/$file" in
      __none__) continue ;;
    esac
    mkdir -p "$dst/$f/$(dirname "$file")"
    cp "$src/$f/$file" "$dst/$f/$file"
  done
done
chmod -R u+w "$dst"
echo "synced ${fixtures[*]} into $dst"
