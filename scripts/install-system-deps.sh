#!/usr/bin/env bash
# System packages the trainer and the tests need: FFmpeg's shared libraries (torchaudio reads audio through
# torchcodec), Debian's Docker Engine (docker.io: dockerd, containerd, runc, docker-init) for the real
# container tests, and debootstrap for their base image (no registry is needed). Installs only what is
# missing, and only where apt-get can be used; elsewhere it says what to install.
set -euo pipefail
missing=()
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
{ command -v dockerd && command -v containerd && command -v runc && command -v docker-init; } >/dev/null 2>&1 \
    || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing system packages: ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
    echo "note: missing system packages: ${missing[*]} (install them with your package manager;" \
         "tests that need them are skipped)" >&2
fi
