#!/usr/bin/env bash
# Media benchmark (issue: decode + sample + preprocess vs the ffmpeg CLI, same run).
# Makes two synthetic H.264 clips with ffmpeg (a 720p clip and a 10-minute clip) in
# target/bench-media/, then runs `videollama bench-media` on each.
# Usage: scripts/bench-media.sh [path/to/videollama]   (default: target/release/videollama)
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/release/videollama}"
out=target/bench-media
mkdir -p "$out"
if [ ! -f "$out/720p.mp4" ]; then
  ffmpeg -v error -y -f lavfi -i "testsrc2=size=1280x720:rate=30:duration=60" \
    -c:v libx264 -preset veryfast -pix_fmt yuv420p "$out/720p.mp4"
fi
if [ ! -f "$out/long.mp4" ]; then
  ffmpeg -v error -y -f lavfi -i "testsrc2=size=640x360:rate=25:duration=600" \
    -c:v libx264 -preset ultrafast -pix_fmt yuv420p "$out/long.mp4"
fi
for clip in 720p long; do
  "$bin" bench-media --video "$out/$clip.mp4" --frames 16 --processor siglip --repeat 3
  echo
done
