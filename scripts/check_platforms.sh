#!/usr/bin/env bash
# Checks that the pinned install resolves on each supported platform, for each
# extra, without installing anything:
#
#   scripts/check_platforms.sh
#
# For every platform/extra pair it resolves setup.py's requirements under
# constraints.txt with `uv pip compile --python-platform ... --python-version
# 3.11`, from wheels only (a package without a wheel for that platform would
# need a compiler there), and checks that every package it resolves is pinned
# in constraints.txt (setuptools excepted: see there). It prints one line per
# pair, "resolved" or the error, and exits 1 if any pair fails.
#
# Needs uv (`pip install uv`, best in a virtual environment of its own; or set
# UV=/path/to/uv), python3, and access to PyPI. uv ignores pip's configuration
# files: it resolves against PyPI (or UV_INDEX_URL / UV_DEFAULT_INDEX if set).
set -euo pipefail
cd "$(dirname "$0")/.."

UV=${UV:-uv}
if ! command -v "$UV" >/dev/null 2>&1; then
  echo "error: uv not found; install it with 'pip install uv' or set UV=/path/to/uv" >&2
  exit 2
fi

PYTHON_VERSION=3.11
# The one pinned package published as a source distribution only; it is pure
# Python, so building it needs no compiler. Every other package must be a wheel.
SDIST_ONLY=promise

# Platform (as uv names it) and the extras checked on it. "cpu" is the plain
# install. Linux: glibc 2.28 or newer (jaxlib and TensorFlow ship
# manylinux_2_27 wheels); for the TPU 2.31, the floor of libtpu's wheels.
# macOS: uv's default target for Apple silicon (macOS 13).
CHECKS=(
  "x86_64-manylinux_2_28 cpu test cuda12 cuda13"
  "x86_64-manylinux_2_31 tpu"
  "aarch64-manylinux_2_28 cpu test cuda12 cuda13"
  "aarch64-apple-darwin cpu test"
)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Writes setup.py's requirements for one extra ("cpu": none) to stdout. It
# reads setup.py with a stand-in for setuptools, so nothing is built.
requirements() {
  python3 - "$1" <<'PY'
import sys
import types

captured = {}
stub = types.ModuleType('setuptools')
stub.setup = lambda **kwargs: captured.update(kwargs)
stub.find_packages = lambda *args, **kwargs: []
sys.modules['setuptools'] = stub
with open('setup.py') as f:
  exec(compile(f.read(), 'setup.py', 'exec'), {'__name__': '__main__'})
extra = sys.argv[1]
extras = captured.get('extras_require', {})
if extra != 'cpu' and extra not in extras:
  sys.exit(f'setup.py has no extra {extra!r}')
for requirement in captured['install_requires'] + (
    [] if extra == 'cpu' else extras[extra]):
  print(requirement)
PY
}

# The names pinned in constraints.txt, normalized as PEP 503 does, and
# setuptools, which constraints.txt leaves to the virtual environment.
normalize() { tr '[:upper:]' '[:lower:]' | sed -E 's/[-_.]+/-/g'; }
{ grep -E '^[A-Za-z0-9]' constraints.txt | sed -E 's/[ =<>!~;].*//'
  echo setuptools; } | normalize | sort -u > "$tmp/pinned"

failed=0
for check in "${CHECKS[@]}"; do
  read -r platform extras <<< "$check"
  for extra in $extras; do
    label="$platform $extra:"
    if ! requirements "$extra" > "$tmp/requirements.in" 2> "$tmp/log"; then
      echo "$label FAILED: $(tr -s ' \n' ' ' < "$tmp/log" | sed 's/ $//')"
      failed=1
      continue
    fi
    if "$UV" pip compile "$tmp/requirements.in" --no-config --quiet \
        --python-platform "$platform" --python-version "$PYTHON_VERSION" \
        --constraint constraints.txt --only-binary :all: \
        --no-binary "$SDIST_ONLY" --no-header --no-annotate \
        --output-file "$tmp/resolved.txt" > "$tmp/log" 2>&1; then
      unpinned=$(grep -E '^[A-Za-z0-9]' "$tmp/resolved.txt" \
        | while IFS= read -r line; do
            name=$(sed -E 's/[ =<>!~;\[].*//' <<< "$line" | normalize)
            grep -qxF "$name" "$tmp/pinned" || printf '%s ' "$line"
          done)
      count=$(grep -cE '^[A-Za-z0-9]' "$tmp/resolved.txt")
      if [[ -z "$unpinned" ]]; then
        echo "$label resolved ($count packages, all pinned)"
      else
        echo "$label FAILED: not pinned in constraints.txt: ${unpinned% }"
        failed=1
      fi
    else
      # uv's error on one line.
      echo "$label FAILED: $(tr -s ' \n' ' ' < "$tmp/log" | sed 's/ $//')"
      failed=1
    fi
  done
done
exit "$failed"
