# Helpers shared by launch/tpu_vm.sh and launch/gcp_batch.sh (sourced).
# shellcheck shell=bash

usage_error() {
  echo "error: $*" >&2
  exit 2
}

fail() {
  echo "error: $*" >&2
  exit 1
}

# Quotes one argument for a POSIX shell: as-is when safe, else in '...'
# (for --flag=value, only the value).
quote() {
  local s=$1 r="'\\''"
  if [[ -n $s && $s =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$s"
  elif [[ $s =~ ^--[A-Za-z0-9_.-]+= ]]; then
    printf '%s' "${BASH_REMATCH[0]}"
    quote "${s#"${BASH_REMATCH[0]}"}"
  else
    printf "'%s'" "${s//\'/$r}"
  fi
}

# Quotes a whole command line.
quote_cmd() {
  local out='' a
  for a in "$@"; do
    out+="${out:+ }$(quote "$a")"
  done
  printf '%s' "$out"
}
