#!/usr/bin/env bash
# The lint / type gates (issue 13): rustfmt, clippy (pedantic, the curated [lints] table in
# Cargo.toml), ruff check + ruff format --check ([tool.ruff] in pyproject.toml), mypy --strict
# on python/fastnll ([tool.mypy]) and stubtest of the compiled fastnll._core against _core.pyi.
# Every gate runs even if an earlier one fails; the script exits non-zero if any failed.
# stubtest imports fastnll._core, so the package must be installed (maturin develop / pip install .).
set -uo pipefail
cd "$(dirname "$0")/.."

# Pinned: ruff's default rule set and mypy's checks change between releases, and CI machines are
# fresh, so the versions the code was checked with are installed when missing or different.
RUFF_VERSION=0.17.6
MYPY_VERSION=2.4.1
need=()
python3 -m ruff --version 2>/dev/null | grep -qx "ruff $RUFF_VERSION" || need+=("ruff==$RUFF_VERSION")
[ "$(python3 -c 'import importlib.metadata as m; print(m.version("mypy"))' 2>/dev/null)" = "$MYPY_VERSION" ] \
  || need+=("mypy==$MYPY_VERSION")
if [ ${#need[@]} -gt 0 ]; then
  echo "== pip install ${need[*]}"
  python3 -m pip install --quiet "${need[@]}" || exit 1
fi

# rustfmt and clippy are rustup components a minimal toolchain may lack.
if ! { cargo fmt --version && cargo clippy --version; } >/dev/null 2>&1 && command -v rustup >/dev/null; then
  echo "== rustup component add rustfmt clippy"
  rustup component add rustfmt clippy || exit 1
fi

failed=()
gate() {
  local name=$1; shift
  echo "== gate: $name"
  if ! "$@"; then failed+=("$name"); echo "FAILED: $name"; fi
}

gate "cargo fmt --check" cargo fmt --all --check
gate "cargo clippy" cargo clippy --quiet --all-targets --all-features -- -D warnings
gate "ruff check" python3 -m ruff check
gate "ruff format --check" python3 -m ruff format --check
gate "mypy --strict" python3 -m mypy --strict python/fastnll
# No allowlist: PyO3 gives every function a text signature stubtest can read.
gate "stubtest fastnll._core" python3 -m mypy.stubtest fastnll._core

if [ ${#failed[@]} -gt 0 ]; then
  echo "gates FAILED: ${failed[*]}"
  exit 1
fi
echo "all gates passed"
