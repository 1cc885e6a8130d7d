#!/usr/bin/env bash
# The test command: the Rust core's tests (every SIMD path inside them), then the whole Python
# suite once per SIMD path this CPU has (FASTNLL_SIMD pins the path for the process).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test (core; each test runs on every SIMD path)"
cargo test --quiet

paths=$(python3 -c "import fastnll; print(' '.join(fastnll.available_simd_paths()))")
for p in $paths; do
  echo "== pytest on FASTNLL_SIMD=$p"
  FASTNLL_SIMD=$p python3 -m pytest -q
done
