#!/usr/bin/env bash
# Runs the Rust core's tests (the unit tests in src/tests.rs and the property tests in
# tests/proptest_core.rs) under valgrind memcheck, once on the scalar and once on the AVX2 SIMD
# path (FASTNLL_SIMD pins the path in both test binaries; valgrind cannot decode AVX-512).
#
#   bash scripts/valgrind.sh                       # release build, PROPTEST_CASES=24
#   VALGRIND_PROFILE=dev bash scripts/valgrind.sh  # debug build (overflow checks; slower)
#   PROPTEST_CASES=100 VALGRIND_PATHS="scalar" bash scripts/valgrind.sh
#
# Prints one "ERROR SUMMARY" line per run (and the full log of a failing run); exits 1 if
# memcheck reported any error (--error-exitcode=1) or a test failed.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v valgrind >/dev/null 2>&1; then
  echo "== valgrind not found: installing it with apt-get"
  if [ "$(id -u)" -eq 0 ]; then apt-get update -qq && apt-get install -y -qq valgrind
  else sudo apt-get update -qq && sudo apt-get install -y -qq valgrind; fi
fi

profile=${VALGRIND_PROFILE:-release}
export PROPTEST_CASES=${PROPTEST_CASES:-24}
# Few worker threads: valgrind runs one thread at a time anyway.
export FASTNLL_NUM_THREADS=${FASTNLL_NUM_THREADS:-2}
export RUST_BACKTRACE=1

echo "== building the test binaries (cargo profile: $profile)"
build_json=$(mktemp)
logdir=$(mktemp -d)
trap 'rm -rf "$build_json" "$logdir"' EXIT
cargo test --profile "$profile" --lib --test proptest_core --no-run --message-format=json \
  >"$build_json"
mapfile -t binaries < <(python3 - "$build_json" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") \
            and msg.get("profile", {}).get("test"):
        print(msg["executable"])
EOF
)
if [ "${#binaries[@]}" -lt 2 ]; then
  echo "expected the unit-test and proptest_core binaries, found: ${binaries[*]:-none}" >&2
  exit 1
fi

# Paths: scalar always; avx2 where the CPU has it (the tests skip unavailable paths anyway).
paths=${VALGRIND_PATHS:-"scalar avx2"}
if ! grep -q avx2 /proc/cpuinfo 2>/dev/null; then paths=${paths/avx2/}; fi

status=0
summaries=()
for path in $paths; do
  for bin in "${binaries[@]}"; do
    name=$(basename "$bin")
    log="$logdir/$name.$path.log"
    echo "== valgrind memcheck: $name on FASTNLL_SIMD=$path (PROPTEST_CASES=$PROPTEST_CASES)"
    start=$(date +%s)
    if FASTNLL_SIMD=$path valgrind --tool=memcheck --error-exitcode=1 --leak-check=full \
        --errors-for-leak-kinds=definite --track-origins=yes \
        "$bin" --test-threads=2 >"$log" 2>&1; then
      rc=0
    else
      rc=$?
      status=1
      cat "$log"
    fi
    grep -E "^test result:" "$log" || true
    line=$(grep -E "ERROR SUMMARY" "$log" | tail -1)
    case $rc in
      0) what="ok" ;;
      1) what="MEMCHECK ERRORS" ;;
      101) what="a test failed (not a memcheck error; see the log above)" ;;
      *) what="exit $rc" ;;
    esac
    summaries+=("$path $name [$what, $(( $(date +%s) - start ))s]: ${line#==*== }")
  done
done

echo
echo "== memcheck summaries"
printf '%s\n' "${summaries[@]}"
exit $status
