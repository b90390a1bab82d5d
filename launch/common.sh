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

# Warnings held back until the local check has passed, so that a rejected
# command is one line.
warnings=()

print_warnings() {
  local w
  for w in "${warnings[@]}"; do
    echo "warning: $w" >&2
  done
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
      warnings+=("HEAD ($ref) is on no remote branch: push it, or $who cannot fetch it")
    fi
  fi
}

# Runs `main.py MAIN_ARGS --check_local` here, in REPO_ROOT (a relative
# --config is read as on the workers), before anything is created: the config
# checks that need no target machine. The Python is $DD_LOCAL_PYTHON, else
# python3 on PATH. On success sets check_command and check_plan (its stdout).
# A rejected command: the check's `error:` line and exit 2. A check that
# cannot run (e.g. a Python without the project): one line and exit 1.
local_check() {
  local py=${DD_LOCAL_PYTHON:-python3} err rc=0 line last
  command -v "$py" >/dev/null 2>&1 ||
    usage_error "no '$py' here for the local check (main.py --check_local): activate the project's venv, or set DD_LOCAL_PYTHON=/path/to/python"
  check_command="$(quote_cmd "$py" main.py "$@" --check_local)"
  err=$(mktemp) || fail "mktemp failed"
  check_plan=$(cd "$REPO_ROOT" && "$py" main.py "$@" --check_local </dev/null 2>"$err") ||
    rc=$?
  line=$(grep '^error: ' "$err" | tail -n 1) || true
  last=$(grep -v '^[[:space:]]*$' "$err" | tail -n 1 | sed 's/^[[:space:]]*//') || true
  rm -f "$err"
  ((rc != 0)) || return 0
  if [[ -n $line ]]; then
    echo "$line" >&2
    exit 2
  fi
  fail "the local check ($check_command, in $REPO_ROOT) exited $rc with no 'error:' line${last:+, last: $last}; if '$py' lacks the project, set DD_LOCAL_PYTHON"
}

# Shows the local check's plan: comment lines on stdout when $1 is 1
# (--dry-run: the output stays pasteable), else on stderr.
print_check() {
  if (($1)); then
    echo "# local check passed: $check_command"
    printf '%s\n' "$check_plan" | sed 's/^/#   /'
  else
    echo "== local check passed: $check_command" >&2
    printf '%s\n' "$check_plan" | sed 's/^/   /' >&2
  fi
}
