#!/usr/bin/env bash
# The Rust core's tests on AArch64 (the NEON path and the scalar path), on an x86-64 Debian
# machine: cross-compiled by Debian's rustc (which ships an arm64 standard library; rustup's
# targets cannot be fetched here), linked statically (qemu-user hangs in dynamically linked
# glibc's thread start-up), run under qemu-user. Installs what it needs with apt-get (root);
# meant for CI and for developers checking NEON code, not part of the README's test command.
#
#   bash scripts/test-aarch64.sh                 # install if missing, then cargo test
#   bash scripts/test-aarch64.sh --install-only  # exit 0 once the tools are there
#   bash scripts/test-aarch64.sh --no-install    # exit 2 if they are not
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
[ -x /usr/bin/rustc ] && [ -d /usr/lib/rustlib/aarch64-unknown-linux-gnu ] ||
  need+=(rustc-web cargo-web libstd-rust-web-dev:arm64)
if [ ${#need[@]} -gt 0 ]; then
  if [ "${1:-}" = "--no-install" ]; then
    echo "missing: ${need[*]}" >&2
    exit 2
  fi
  echo "== installing ${need[*]}"
  dpkg --add-architecture arm64
  apt-get update -q -o Acquire::Retries=3 >/dev/null || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o Acquire::Retries=3 "${need[@]}" >/dev/null
fi
[ "${1:-}" = "--install-only" ] && exit 0

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64-static
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static"
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
echo "== cargo test on aarch64 ($($RUSTC --version); $(qemu-aarch64-static --version | head -1))"
# Each core test runs on every path the CPU has: here scalar and neon.
cargo test --quiet --release --target aarch64-unknown-linux-gnu --target-dir target/aarch64
