#!/usr/bin/env bash
# The test command: the Rust core's tests, then the Python suite on every SIMD path this CPU
# has (the full suite on the best path; the numerics suites again on each other path).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test (core, every SIMD path inside the tests)"
cargo test --quiet

echo "== pytest (best SIMD path)"
python3 -m pytest -q

paths=$(python3 -c "import fastnll; print(' '.join(p for p in fastnll.available_simd_paths() if p != fastnll.simd_path()))")
for p in $paths; do
  echo "== pytest numerics on FASTNLL_SIMD=$p"
  FASTNLL_SIMD=$p python3 -m pytest -q -m "not slow" tests/test_reference.py tests/test_edge_cases.py tests/test_simd_paths.py
done
