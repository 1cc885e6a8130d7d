#!/usr/bin/env bash
# Build the binary wheel users install without Rust: one abi3 wheel (CPython >= 3.10, from
# [tool.maturin] features in pyproject.toml) tagged manylinux_2_28, linked with zig (the
# `ziglang` pip package) so that it does not depend on this machine's newer glibc.
#
#   bash scripts/wheel.sh          # -> dist/fastnll-<version>-cp310-abi3-manylinux_2_28_<arch>.whl
#   bash scripts/wheel.sh --test   # ... then install it into a fresh venv with no cargo on PATH,
#                                  #     import it and run the test suite against it
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
PY=${PYTHON:-python3}

echo "== build tools (pip: maturin, ziglang, auditwheel)"
"$PY" -m pip install --quiet 'maturin>=1.7,<2' ziglang auditwheel
bindir=$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
export PATH="$bindir:$PATH"  # maturin and auditwheel of this Python

echo "== maturin build --release --zig --compatibility manylinux_2_28"
rm -rf dist
# A target dir of its own: the zig-linked build must not reuse the ordinary build's objects.
CARGO_TARGET_DIR="${WHEEL_TARGET_DIR:-$repo/target/wheel}" \
  maturin build --release --zig --compatibility manylinux_2_28 --out dist --interpreter "$PY"
shopt -s nullglob
wheels=(dist/fastnll-*.whl)
[ "${#wheels[@]}" -eq 1 ] || { echo "expected one wheel in dist/, got: ${wheels[*]:-none}"; exit 1; }
whl=${wheels[0]}
echo "built $whl"

echo "== auditwheel show"
show=$(auditwheel show "$whl")
echo "$show"
case "$(basename "$whl")" in
  *-cp310-abi3-manylinux_2_28_*.whl | *-cp310-abi3-manylinux_2_1[0-9]_*.whl | \
  *-cp310-abi3-manylinux_2_2[0-7]_*.whl | *-cp310-abi3-manylinux201[04]_*.whl) ;;
  *) echo "FAIL: $whl is not an abi3 wheel tagged manylinux_2_28 or older"; exit 1 ;;
esac
echo "$show" | grep -Eq 'manylinux_2_(1[0-9]|2[0-8])' \
  || { echo "FAIL: auditwheel does not report manylinux_2_28 or older"; exit 1; }

[ "${1:-}" = "--test" ] || exit 0

echo "== install the wheel into a fresh venv, no cargo on PATH"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# System site-packages provide the test and peer libraries (torch is large); the venv's own
# site-packages, which come first, get fastnll from the wheel only.
"$PY" -m venv --system-site-packages "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet --no-deps --force-reinstall "$whl"
# PATH without any Rust toolchain: rustup's directories dropped, and a system directory that
# holds cargo or rustc (Debian's cargo-web puts them in /usr/bin) replaced by a directory of
# links to everything else in it.
parts=()
IFS=: read -ra dirs <<< "$PATH"
for d in "${dirs[@]}"; do
  case "$d" in *.cargo*|*.rustup*|"") continue ;; esac
  [ -d "$d" ] || continue
  if [ -e "$d/cargo" ] || [ -e "$d/rustc" ]; then
    sd="$tmp/path-without-rust/${d//\//_}"
    mkdir -p "$sd"
    for f in "$d"/*; do
      b=${f##*/}
      case "$b" in cargo*|rustc*|rustdoc*|rustup*|rust-gdb*|rust-lldb*) continue ;; esac
      ln -s "$f" "$sd/$b"
    done
    parts+=("$sd")
  else
    parts+=("$d")
  fi
done
nocargo="$tmp/venv/bin:$(IFS=:; echo "${parts[*]}")"
if PATH=$nocargo command -v cargo >/dev/null || PATH=$nocargo command -v rustc >/dev/null; then
  echo "FAIL: cargo/rustc still on PATH"; exit 1
fi
# Tests, docs (read by the doctests) and the pytest configuration, away from the source tree
# so that `import fastnll` can only find the installed wheel.
mkdir "$tmp/run"
cp -r tests docs pyproject.toml Cargo.toml "$tmp/run/"
cd "$tmp/run"
PATH=$nocargo python -c "
import fastnll, sys
where = fastnll.__file__
assert where.startswith('$tmp/venv/'), where
print('imported', fastnll.__version__, 'from', where, 'simd', fastnll.simd_path())
"
echo "== pytest against the wheel"
PATH=$nocargo python -m pytest -q -p no:cacheprovider
