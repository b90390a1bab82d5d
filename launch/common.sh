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

# Sets workdir to the --workdir among main.py's arguments (the rest of the
# arguments), which must be a gs:// path; $1 says why, in the error.
require_gs_workdir() {
  local why=$1 i
  shift
  (($#)) || usage_error "main.py arguments are required after --, e.g. -- --config=... --workdir=gs://..."
  local args=("$@")
  workdir=''
  for ((i = 0; i < ${#args[@]}; i++)); do
    case ${args[i]} in
      --workdir=* | -workdir=*) workdir=${args[i]#*=} ;;
      --workdir | -workdir) workdir=${args[i + 1]:-} ;;
    esac
  done
  [[ -n $workdir ]] || usage_error "main.py arguments need --workdir=gs://..."
  [[ $workdir == gs://?* ]] ||
    usage_error "--workdir must be a gs:// path ($why), got: $workdir"
}

# Sets repo and ref, where not given, from this checkout (REPO_ROOT); $1
# names who fetches them, in the warning about an unpushed HEAD.
default_repo_and_ref() {
  local who=$1
  if [[ -z $repo ]]; then
    repo=$(git -C "$REPO_ROOT" remote get-url origin 2>/dev/null) ||
      usage_error "--repo=URL is required: this checkout has no 'origin' remote"
  fi
  if [[ -z $ref ]]; then
    ref=$(git -C "$REPO_ROOT" rev-parse HEAD 2>/dev/null) ||
      usage_error "--ref=REF is required: cannot read this checkout's HEAD"
    if [[ -z $(git -C "$REPO_ROOT" branch -r --contains HEAD 2>/dev/null) ]]; then
      echo "warning: HEAD ($ref) is on no remote branch: push it, or $who cannot fetch it" >&2
    fi
  fi
}
