#!/bin/sh
# Cross-compile posbridge for the Raspberry Pi without containers: rustup's std for the
# target + Debian's cross gcc as the linker. Optionally packs a .deb (cargo-deb).
#
# Usage: deploy/cross-build.sh [--target TRIPLE] [--debug] [--no-default-features] [--deb] [--install-deps]
#   TRIPLE: aarch64-unknown-linux-gnu (Pi 3/4/5 with 64-bit OS, default)
#           armv7-unknown-linux-gnueabihf (32-bit Raspberry Pi OS)
#   --no-default-features  leave the embedded MQTT broker (and `posbridge demo`) out: the
#                          production agent talks to an external broker.
#   --deb                  also build target/<triple>/debian/posbridge_<ver>_<arch>.deb
#   --install-deps         apt-get the cross toolchain and rustup the target first (root)
# Prints the path of the binary (or, with --deb, of the .deb) on its last line.
set -eu
cd "$(dirname "$0")/.."

target=aarch64-unknown-linux-gnu
profile=release
features=""
deb=0
deps=0
while [ $# -gt 0 ]; do
  case "$1" in
    --target) target=$2; shift 2 ;;
    --target=*) target=${1#--target=}; shift ;;
    --debug) profile=debug; shift ;;
    --no-default-features) features=--no-default-features; shift ;;
    --deb) deb=1; shift ;;
    --install-deps) deps=1; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "cross-build: unknown argument $1" >&2; exit 2 ;;
  esac
done

case "$target" in
  aarch64-unknown-linux-gnu)
    gcc=aarch64-linux-gnu-gcc; pkgs="gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
    sysroot=/usr/aarch64-linux-gnu; qemu="qemu-aarch64" ;;
  armv7-unknown-linux-gnueabihf)
    gcc=arm-linux-gnueabihf-gcc; pkgs="gcc-arm-linux-gnueabihf libc6-dev-armhf-cross"
    sysroot=/usr/arm-linux-gnueabihf; qemu="qemu-arm" ;;
  *) echo "cross-build: unsupported target $target" >&2; exit 2 ;;
esac

if [ "$deps" -eq 1 ]; then
  if ! command -v "$gcc" >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086 # the package list is meant to split
    apt-get install -y -qq $pkgs >/dev/null
  fi
  rustup target add "$target" >/dev/null
fi
if ! command -v "$gcc" >/dev/null 2>&1; then
  echo "cross-build: $gcc not found; run with --install-deps or: apt-get install $pkgs" >&2
  exit 1
fi

# CARGO_TARGET_<TRIPLE>_LINKER, and CC/AR for any C code built by build scripts.
triple_env=$(echo "$target" | tr 'a-z-' 'A-Z_')
export "CARGO_TARGET_${triple_env}_LINKER=$gcc"
cc_triple=$(echo "$target" | tr '-' '_')
export "CC_${cc_triple}=$gcc"
export "AR_${cc_triple}=${gcc%-gcc}-ar"

set -- build --locked --target "$target"
[ "$profile" = release ] && set -- "$@" --release
[ -n "$features" ] && set -- "$@" "$features"
echo "cross-build: cargo $*" >&2
cargo "$@"

target_dir=${CARGO_TARGET_DIR:-target}
bin="$target_dir/$target/$profile/posbridge"
echo "cross-build: built $bin (run it here with: $qemu -L $sysroot $bin --version)" >&2

if [ "$deb" -eq 1 ]; then
  if ! command -v cargo-deb >/dev/null 2>&1; then
    echo "cross-build: cargo-deb not installed (cargo install cargo-deb --locked)" >&2
    exit 1
  fi
  # --no-build: package the binary just built. cargo-deb prints the .deb's path.
  debfile=$(cargo deb --no-build --target "$target" ${features:+--no-default-features} | tail -n 1)
  echo "cross-build: packed $debfile" >&2
  echo "$debfile"
else
  echo "$bin"
fi
