#!/usr/bin/env bash
# Debian-built stand-ins for the public base images, for hosts that reach no image registry but do reach a Debian
# mirror and PyPI (docs/OPERATIONS.md, "Without an image registry"). compose.local.yml selects them:
#   chexcurate-local/python:3.11-bookworm  debootstrap'd Debian, python3.11 + venv, this host's CA bundle (app base)
#   chexcurate-local/postgres:15-bookworm  Debian's PostgreSQL on it, initialised like the official image
#   chexcurate-local/redis:7-bookworm      Debian's Redis on it
# Each is rebuilt only when its tag is missing or its inputs changed: the hash of its inputs is the image's
# org.chexcurate.inputs label. The CPU torch wheel that requirements/cpu.txt pins is copied into deploy/wheels/
# (git-ignored, part of the build context), found through this host's pip configuration (index or find-links).
# Needs root (debootstrap, chroot), debootstrap and a Docker engine.
set -euo pipefail
cd "$(dirname "$0")/.."

SUITE=bookworm
MIRROR=${CHEX_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${CHEX_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
# the CA bundle containers need to reach the package registries (a TLS-inspecting proxy's CA included)
CA_BUNDLE=${CHEX_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
LABEL=org.chexcurate.inputs
BASE=chexcurate-local/python:3.11-bookworm
POSTGRES=chexcurate-local/postgres:15-bookworm
REDIS=chexcurate-local/redis:7-bookworm

say() { printf 'local-images: %s\n' "$*" >&2; }
inputs_hash() { sha256sum | cut -c1-16; }
built_from() { docker image inspect --format "{{ index .Config.Labels \"$LABEL\" }}" "$1" 2>/dev/null || true; }

ROOTFS=""
# debootstrap mounts /proc and /sys in the target while it configures packages: never delete through a mount
remove_rootfs() {
  [ -n "$ROOTFS" ] || return 0
  for m in proc sys dev/pts; do
    if mountpoint -q "$ROOTFS/$m"; then umount -l "$ROOTFS/$m"; fi
  done
  rm -rf --one-file-system "$ROOTFS"
  ROOTFS=""
}
trap remove_rootfs EXIT

# build_base HASH
build_base() {
  ROOTFS=$(mktemp -d /var/tmp/chexcurate-rootfs.XXXXXX)
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$SUITE" "$ROOTFS" "$MIRROR" >/dev/null
  install -D -m 0644 "$CA_BUNDLE" "$ROOTFS/usr/local/share/ca-certificates/host-ca-bundle.crt"
  chroot "$ROOTFS" update-ca-certificates >/dev/null
  cat >"$ROOTFS/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
  # images built on this base install packages without starting their services or pulling recommends
  printf '#!/bin/sh\nexit 101\n' >"$ROOTFS/usr/sbin/policy-rc.d"
  chmod 0755 "$ROOTFS/usr/sbin/policy-rc.d"
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$ROOTFS/etc/apt/apt.conf.d/90chexcurate"
  rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/log/* "$ROOTFS"/tmp/*
  tar --numeric-owner -C "$ROOTFS" -c . | docker import \
    --change "LABEL $LABEL=$1" \
    --change 'ENV LANG=C.UTF-8 SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python3"]' - "$BASE" >/dev/null
  remove_rootfs
}

# service_image TAG NAME: deploy/local/NAME.Dockerfile with NAME-entrypoint.sh, built on the base
service_image() {
  local tag=$1 name=$2 hash
  hash=$(cat "deploy/local/$name.Dockerfile" "deploy/local/$name-entrypoint.sh" \
    <(docker image inspect --format '{{.Id}}' "$BASE") | inputs_hash)
  if [ "$(built_from "$tag")" = "$hash" ]; then
    say "$tag is current"
    return
  fi
  say "building $tag"
  docker build --quiet --build-arg "BASE=$BASE" --label "$LABEL=$hash" --tag "$tag" \
    --file "deploy/local/$name.Dockerfile" deploy/local >/dev/null
}

base_hash=$(cat deploy/local-images.sh "$CA_BUNDLE" <(echo "$SUITE $MIRROR $SECURITY_MIRROR") | inputs_hash)
if [ "$(built_from "$BASE")" = "$base_hash" ]; then
  say "$BASE is current"
else
  say "building $BASE (debootstrap $SUITE from $MIRROR)"
  build_base "$base_hash"
fi
service_image "$POSTGRES" postgres
service_image "$REDIS" redis

torch=$(grep '^torch==' requirements/cpu.txt)
if python3 -m pip download --quiet --no-deps --only-binary=:all: --dest deploy/wheels \
  --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp --abi cp311 "$torch"; then
  say "deploy/wheels/ holds $torch"
else
  say "no $torch wheel reachable from here: the CPU image build installs it from the PyTorch CPU index"
fi
