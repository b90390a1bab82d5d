#!/usr/bin/env bash
# Runs main.py on a Cloud TPU VM (a single host or a multi-host pod slice).
#
#   launch/tpu_vm.sh [--dry-run] --name=N --zone=Z --accelerator=v4-32 \
#       [--version=...] [--project=P] [--spot] [--repo=URL] [--ref=REF] \
#       [--tfds_data_dir=gs://...] -- --config=configs/cifar10_distill.py \
#       --workdir=gs://BUCKET/DIR [--config.x.y=value ...]
#   launch/tpu_vm.sh logs --name=N --zone=Z [--worker=0|all]
#   launch/tpu_vm.sh delete --name=N --zone=Z
#
# See launch/README.md. --dry-run prints the gcloud commands instead of
# running them. Bad usage: one line "error: ..." on stderr and exit 2.

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
readonly LIBTPU_INDEX=https://storage.googleapis.com/jax-releases/libtpu_releases.html

usage() {
  cat <<'EOF'
Usage:
  launch/tpu_vm.sh [--dry-run] --name=N --zone=Z --accelerator=TYPE [options] -- MAIN_ARGS...
  launch/tpu_vm.sh [--dry-run] logs --name=N --zone=Z [--worker=0|all] [--project=P]
  launch/tpu_vm.sh [--dry-run] delete --name=N --zone=Z [--project=P]

Creates the TPU VM (unless it exists), installs the code and a venv on every
worker, checks jax.device_count() on every worker, then starts
`python main.py MAIN_ARGS --multihost` on every worker in the background (log:
~/diffusion_distill.log on each worker). MAIN_ARGS must hold --workdir=gs://...

Options:
  --accelerator=TYPE       e.g. v4-32, v5litepod-16, v5p-8, v6e-8
  --version=V              TPU software version (default: by TPU generation)
  --project=P              Google Cloud project (default: gcloud's)
  --spot                   Spot VM: cheaper, may be preempted
  --repo=URL               git URL the workers clone (default: origin remote)
  --ref=REF                branch, tag or commit (default: this checkout's HEAD)
  --tfds_data_dir=gs://..  TFDS_DATA_DIR for main.py
  --python=python3.11      Python for the venv (installed with apt if missing)
  --expected_devices=N     override the expected jax.device_count()
  --worker=0|all           (logs) which worker's log to follow
  --dry-run                print the commands, run nothing
EOF
}

# shellcheck source=SCRIPTDIR/common.sh
source "$REPO_ROOT/launch/common.sh"

# Joins $2... with the separator $1.
join() {
  local sep=$1 out=$2
  shift 2
  local a
  for a in "$@"; do
    out+="$sep$a"
  done
  printf '%s' "$out"
}

# Prints (--dry-run) or echoes to stderr and runs a command.
run() {
  if ((dry_run)); then
    quote_cmd "$@"
    echo
  else
    echo "+ $(quote_cmd "$@")" >&2
    "$@"
  fi
}

step() {
  if ((dry_run)); then
    echo "# $*"
  else
    echo "== $*" >&2
  fi
}

# The default --version for an accelerator type.
default_version() {
  case $1 in
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) return 1 ;;
  esac
}

# jax.device_count() of a whole slice: v2/v3 show one device per TensorCore,
# v4/v5p one per (two-core) chip, v5e/v6e one per (one-core) chip.
default_device_count() {
  local size=${1##*-}
  case $1 in
    v2-* | v3-* | v5litepod-* | v6e-*) echo "$size" ;;
    v4-* | v5p-*) echo $((size / 2)) ;;
    *) return 1 ;;
  esac
}

subcommand=launch
dry_run=0
spot=0
name=''
zone=''
accelerator=''
version=''
project=''
repo=''
ref=''
tfds_data_dir=''
python=python3.11
expected_devices=''
worker=''
main_args=()
launch_only=()

while (($#)); do
  case $1 in
    --) shift; main_args=("$@"); break ;;
    -h | --help) usage; exit 0 ;;
    --dry-run | --dry_run) dry_run=1 ;;
    --spot) spot=1; launch_only+=(--spot) ;;
    --name=*) name=${1#*=} ;;
    --zone=*) zone=${1#*=} ;;
    --project=*) project=${1#*=} ;;
    --worker=*) worker=${1#*=} ;;
    --accelerator=*) accelerator=${1#*=}; launch_only+=(--accelerator) ;;
    --version=*) version=${1#*=}; launch_only+=(--version) ;;
    --repo=*) repo=${1#*=}; launch_only+=(--repo) ;;
    --ref=*) ref=${1#*=}; launch_only+=(--ref) ;;
    --tfds_data_dir=*) tfds_data_dir=${1#*=}; launch_only+=(--tfds_data_dir) ;;
    --python=*) python=${1#*=}; launch_only+=(--python) ;;
    --expected_devices=*) expected_devices=${1#*=}; launch_only+=(--expected_devices) ;;
    --name | --zone | --project | --worker | --accelerator | --version | --repo | --ref | \
      --tfds_data_dir | --python | --expected_devices)
      usage_error "$1 needs a value: $1=..." ;;
    logs | delete)
      [[ $subcommand == launch ]] || usage_error "more than one subcommand: $subcommand, $1"
      subcommand=$1 ;;
    *) usage_error "unknown argument: $1 (main.py arguments go after --; see --help)" ;;
  esac
  shift
done

[[ -n $name ]] || usage_error "--name=N is required"
[[ $name =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] ||
  usage_error "bad --name=$name: lowercase letters, digits and '-', starting with a letter, at most 63"
[[ -n $zone ]] || usage_error "--zone=Z is required (e.g. --zone=us-central2-b)"
[[ $zone =~ ^[a-z0-9-]+$ ]] || usage_error "bad --zone=$zone"

gcloud_flags=("--zone=$zone")
[[ -z $project ]] || gcloud_flags+=("--project=$project")

if [[ $subcommand != launch ]]; then
  if ((${#launch_only[@]})) || ((${#main_args[@]})); then
    usage_error "'$subcommand' takes only --name, --zone, --project${worker:+ and --worker} (got ${launch_only[0]:-main.py arguments})"
  fi
  [[ $subcommand == logs || -z $worker ]] || usage_error "--worker is only for 'logs'"
fi

case $subcommand in
  logs)
    worker=${worker:-0}
    [[ $worker =~ ^([0-9]+|all)$ ]] || usage_error "bad --worker=$worker: a number or 'all'"
    # shellcheck disable=SC2016  # $HOME expands on the worker.
    run gcloud compute tpus tpu-vm ssh "$name" "${gcloud_flags[@]}" "--worker=$worker" \
      '--command=tail -n 200 -F "$HOME/diffusion_distill.log"'
    exit 0
    ;;
  delete)
    run gcloud compute tpus tpu-vm delete "$name" "${gcloud_flags[@]}" --quiet
    exit 0
    ;;
esac

# --- launch ---
[[ -z $worker ]] || usage_error "--worker is only for 'logs'"
[[ -n $accelerator ]] || usage_error "--accelerator=TYPE is required (e.g. --accelerator=v4-32)"
[[ $accelerator =~ ^v[0-9a-z]+-[0-9]+$ ]] || usage_error "bad --accelerator=$accelerator (e.g. v4-32)"
if [[ -z $version ]]; then
  version=$(default_version "$accelerator") ||
    usage_error "no default --version for $accelerator: pass --version=..."
fi
if [[ -z $expected_devices ]]; then
  expected_devices=$(default_device_count "$accelerator") ||
    usage_error "unknown device count for $accelerator: pass --expected_devices=N"
fi
[[ $expected_devices =~ ^[1-9][0-9]*$ ]] || usage_error "bad --expected_devices=$expected_devices"
[[ $python =~ ^python3(\.[0-9]+)?$ ]] || usage_error "bad --python=$python (e.g. python3.11)"
if [[ -n $tfds_data_dir && $tfds_data_dir != gs://?* ]]; then
  usage_error "--tfds_data_dir must be a gs:// path (the workers read it), got: $tfds_data_dir"
fi

require_gs_workdir "all workers write it; a preempted VM loses its disk" "${main_args[@]}"

ref_given=$ref
default_repo_and_ref "the workers"
if [[ -z $ref_given && -n $(git -C "$REPO_ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
  echo "warning: uncommitted changes in $REPO_ROOT are not sent to the workers" >&2
fi

# Remote scripts: values go in through quoted assignments (or `set --` for
# main.py's arguments); the bodies are constant text expanded on the worker.
# shellcheck disable=SC2016
bootstrap_body=(
  'set -eu'
  'D="$HOME/diffusion_distill"'
  'if [ -f "$D.pid" ] && kill -0 "$(cat "$D.pid")" 2>/dev/null; then echo "$(hostname): main.py is running (see $D.log): leaving the code as it is" >&2; exit 1; fi'
  'APT="sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -y -qq"'
  'if [ -d "$D/.git" ]; then git -C "$D" remote set-url origin "$REPO"; else git clone --quiet "$REPO" "$D"; fi'
  'git -C "$D" fetch --quiet origin "$REF"'
  'git -C "$D" checkout --quiet --detach FETCH_HEAD'
  'if ! command -v "$PY" >/dev/null 2>&1; then $APT update && $APT install "$PY" "$PY-venv"; fi'
  'if [ ! -x "$D/.venv/bin/pip" ]; then rm -rf "$D/.venv"; "$PY" -m venv "$D/.venv" >/dev/null 2>&1 || { $APT update && $APT install "$PY-venv" && rm -rf "$D/.venv" && "$PY" -m venv "$D/.venv"; }; fi'
  '"$D/.venv/bin/pip" install --quiet --upgrade pip'
  '"$D/.venv/bin/pip" install --quiet -c "$D/constraints.txt" -e "$D" "jax[tpu]" -f "$LIBTPU"'
  'echo "$(hostname): $(git -C "$D" rev-parse --short HEAD) installed"'
)
bootstrap="REPO=$(quote "$repo") REF=$(quote "$ref") PY=$(quote "$python") LIBTPU=$(quote "$LIBTPU_INDEX"); $(join '; ' "${bootstrap_body[@]}")"

# Every worker runs this at once: a multi-host slice initializes together.
# shellcheck disable=SC2016
check_body=(
  'set -eu'
  'n=$("$HOME/diffusion_distill/.venv/bin/python" -c '"'"'import jax; print(jax.device_count())'"'"' | tail -n 1)'
  'echo "jax.device_count()=$n on $(hostname)"'
  'test "$n" = "$N"'
)
check="N=$expected_devices; $(join '; ' "${check_body[@]}")"

# shellcheck disable=SC2016
start_body=(
  'set -eu'
  'LOG="$HOME/diffusion_distill.log"'
  'PID="$HOME/diffusion_distill.pid"'
  'if [ -f "$PID" ] && kill -0 "$(cat "$PID")" 2>/dev/null; then echo "$(hostname): main.py is already running (pid $(cat "$PID")), see $LOG" >&2; exit 1; fi'
  'cd "$HOME/diffusion_distill"'
  'echo "=== $(date -u) main.py $*" >>"$LOG"'
  'nohup .venv/bin/python main.py "$@" >>"$LOG" 2>&1 </dev/null & echo $! >"$PID"'
  'echo "$(hostname): started main.py (pid $(cat "$PID")), log $LOG"'
)
# --multihost: jax.distributed.initialize() finds the slice's hosts, and its
# preemption notice makes every host save the same step on SIGTERM.
start="set -- $(quote_cmd "${main_args[@]}") --multihost"
[[ -z $tfds_data_dir ]] || start+="; export TFDS_DATA_DIR=$(quote "$tfds_data_dir")"
start+="; $(join '; ' "${start_body[@]}")"

create=(gcloud compute tpus tpu-vm create "$name" "${gcloud_flags[@]}"
  "--accelerator-type=$accelerator" "--version=$version")
if ((spot)); then
  create+=(--spot)
fi
ssh_all=(gcloud compute tpus tpu-vm ssh "$name" "${gcloud_flags[@]}" --worker=all)

step "1/4 create the TPU VM (skipped when it exists and is READY)"
if ((dry_run)); then
  run "${create[@]}"
else
  state=$(gcloud compute tpus tpu-vm describe "$name" "${gcloud_flags[@]}" \
    '--format=value(state,acceleratorType)' 2>/dev/null) || state=''
  if [[ -z $state ]]; then
    run "${create[@]}"
  else
    read -r state existing_type <<<"$state"
    [[ $existing_type == "$accelerator" ]] ||
      fail "TPU VM $name exists with accelerator $existing_type, not $accelerator"
    case $state in
      READY) echo "TPU VM $name exists and is READY: reusing it" >&2 ;;
      *) fail "TPU VM $name is $state. Delete it (launch/tpu_vm.sh delete --name=$name --zone=$zone) and launch again: main.py resumes from $workdir" ;;
    esac
  fi
fi

step "2/4 install $repo @ $ref and a venv on every worker"
run "${ssh_all[@]}" "--command=$bootstrap" || fail "installing on the workers failed (see above)"

step "3/4 every worker must see jax.device_count() == $expected_devices"
if ((dry_run)); then
  run "${ssh_all[@]}" "--command=$check"
else
  out=$(mktemp)
  trap 'rm -f "$out"' EXIT
  run "${ssh_all[@]}" "--command=$check" 2>&1 | tee "$out" || true
  counts=$(grep -oE 'jax\.device_count\(\)=[0-9]+ on ' "$out" | cut -d= -f2 | cut -d' ' -f1 |
    sort -u | tr '\n' ' ')
  [[ $counts == "$expected_devices " ]] ||
    fail "expected jax.device_count() == $expected_devices on every worker, got: ${counts:-nothing}"
fi

step "4/4 start main.py on every worker (log: ~/diffusion_distill.log)"
run "${ssh_all[@]}" "--command=$start" || fail "starting main.py failed (see above)"
if ((!dry_run)); then
  echo "started. Follow worker 0: launch/tpu_vm.sh logs --name=$name --zone=$zone${project:+ --project=$project}" >&2
fi
