#!/usr/bin/env bash
# The Rust core's tests on AArch64 (the NEON path and the scalar path), on an x86-64 Debian
# machine: cross-compiled by Debian's rustc-web (which ships an arm64 standard library; rustup's
# targets cannot be fetched here), linked statically (qemu-user hangs in dynamically linked
# glibc's thread start-up), run under qemu-user. Installs what it needs with apt-get (root, Debian
# only); meant for CI and for developers checking NEON code, not part of the README's test command.
#
#   bash scripts/test-aarch64.sh                 # install if missing, then cargo test
#   bash scripts/test-aarch64.sh --install-only  # exit 0 once the tools are there, else 3
#   bash scripts/test-aarch64.sh --no-install    # exit 2 if they are not there
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-}"

# rustc-web must be at least the crate's rust-version
want=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' Cargo.toml)
rustc_ok() {
  [ -x /usr/bin/rustc ] && [ -d /usr/lib/rustlib/aarch64-unknown-linux-gnu ] || return 1
  local have
  have=$(/usr/bin/rustc --version | awk '{print $2}')
  [ "$(printf '%s\n%s\n' "$want" "$have" | sort -V | head -1)" = "$want" ]
}
missing() {
  need=()
  command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
  command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
  rustc_ok || need+=(rustc-web cargo-web libstd-rust-web-dev:arm64)
  [ ${#need[@]} -gt 0 ]
}

if missing; then
  if [ "$mode" = "--no-install" ]; then
    echo "missing: ${need[*]} (rustc >= $want with an arm64 std)" >&2
    exit 2
  fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null ||
    ! grep -qx 'ID=debian' /etc/os-release 2>/dev/null; then
    echo "cannot install ${need[*]}: needs root and apt on Debian" >&2
    exit 3
  fi
  echo "== installing ${need[*]}"
  added=0
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
    added=1
  fi
  apt-get update -q -o Acquire::Retries=3 >/dev/null || true
  # --no-remove: never take away what the machine has (rustc-web conflicts with Debian's rustc)
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-remove \
    -o Acquire::Retries=3 "${need[@]}" >/dev/null || missing; then
    [ $added = 1 ] && dpkg --remove-architecture arm64 2>/dev/null && apt-get update -q >/dev/null 2>&1
    echo "could not install ${need[*]}" >&2
    exit 3
  fi
fi
[ "$mode" = "--install-only" ] && exit 0

# RUSTFLAGS would override the target's flags (and drop +crt-static: qemu would hang)
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64-static
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static"
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
echo "== cargo test on aarch64 ($($RUSTC --version); $(qemu-aarch64-static --version | head -1))"
# Each core test runs on every path the CPU has: here scalar and neon.
timeout 1800 cargo test --quiet --release --target aarch64-unknown-linux-gnu --target-dir target/aarch64
