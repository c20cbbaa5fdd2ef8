#!/usr/bin/env bash
# A Debian bookworm base image made without any registry, for hosts that cannot pull one (the tests, air-
# gapped build machines): debootstrap from the machine's own Debian mirror with python3, python3-venv and
# ca-certificates, the machine's certificate authorities for pip (a proxy that re-signs TLS), then
# `docker import`. Usage: make-local-base-image.sh TAG   (needs root, debootstrap and a Docker daemon)
set -euo pipefail
tag="${1:?usage: $0 TAG}"
mirror="http://deb.debian.org/debian"
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    found="$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources | head -n 1)"
    mirror="${found:-$mirror}"
elif [ -f /etc/apt/sources.list ]; then
    found="$(awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }' /etc/apt/sources.list)"
    mirror="${found:-$mirror}"
fi
work="$(mktemp -d "${TMPDIR:-/tmp}/f5tts-rootfs.XXXXXX")"
trap 'rm -rf "$work"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$work/rootfs" "$mirror" \
    >"$work/debootstrap.log" 2>&1 || { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
# A file no Debian package rewrites, so pip keeps trusting the machine's authorities after apt-get runs.
if [ -s /etc/ssl/certs/ca-certificates.crt ]; then
    cp /etc/ssl/certs/ca-certificates.crt "$work/rootfs/etc/ssl/host-ca-bundle.crt"
    printf '[global]\ncert = /etc/ssl/host-ca-bundle.crt\n' >"$work/rootfs/etc/pip.conf"
fi
tar -C "$work/rootfs" -c . | docker import - "$tag" >/dev/null
echo "imported $tag (bookworm from $mirror)"
