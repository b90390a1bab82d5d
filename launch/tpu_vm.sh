#!/usr/bin/env bash
# Runs main.py on a Cloud TPU VM (a single host or a multi-host pod slice).
#
#   launch/tpu_vm.sh [--dry-run] --name=N --zone=Z --accelerator=v4-32 \
#       [--version=...] [--project=P] [--spot] [--queued] [--delete_when_done] \
#       [--wait_timeout=S | --no_wait] [--repo=URL] [--ref=REF] \
#       [--tfds_data_dir=gs://...] -- --config=configs/cifar10_distill.py \
#       --workdir=gs://BUCKET/DIR [--config.x.y=value ...]
#   launch/tpu_vm.sh logs --name=N --zone=Z [--worker=0|all]
#   launch/tpu_vm.sh delete --name=N --zone=Z [--queued]
#
# See launch/README.md. Before it creates anything (--dry-run included) it
# runs `main.py MAIN_ARGS --check_local` here. --dry-run prints the gcloud
# commands instead of running them. Bad usage, or a command the local check
# rejects: one line "error: ..." on stderr and exit 2.

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
readonly LIBTPU_INDEX=https://storage.googleapis.com/jax-releases/libtpu_releases.html
# Seconds between two looks at a queued resource, or at main.py's log.
readonly QUEUE_POLL_S=30
readonly LOG_POLL_S=10
# Exit codes of the remote wait script (distinct from ssh's and gcloud's).
readonly WAIT_FAILED=10 WAIT_TIMEOUT=11

usage() {
  cat <<'EOF'
Usage:
  launch/tpu_vm.sh [--dry-run] --name=N --zone=Z --accelerator=TYPE [options] -- MAIN_ARGS...
  launch/tpu_vm.sh [--dry-run] logs --name=N --zone=Z [--worker=0|all] [--project=P]
  launch/tpu_vm.sh [--dry-run] delete --name=N --zone=Z [--project=P] [--queued]

Runs `main.py MAIN_ARGS --check_local` here first (the Python: $DD_LOCAL_PYTHON,
else python3 on PATH); a rejected command creates nothing. Then creates the TPU
VM (unless it exists), installs the code and a venv on every worker, checks
jax.device_count() on every worker, starts `python main.py MAIN_ARGS
--multihost` on every worker in the background (log: ~/diffusion_distill.log
on each worker), and waits until worker 0's main.py has logged its first step
or failed, printing the log's tail. MAIN_ARGS must hold --workdir=gs://...

Options:
  --accelerator=TYPE       e.g. v4-32, v5litepod-16, v5p-8, v6e-8
  --version=V              TPU software version (default: by TPU generation)
  --project=P              Google Cloud project (default: gcloud's)
  --spot                   Spot VM: cheaper, may be preempted
  --queued                 create the TPU through a queued resource and wait
                           until it is ACTIVE (when capacity is short); with
                           'delete', delete the queued resource too
  --queue_timeout=S        with --queued: wait at most S seconds (default 3600)
  --delete_when_done       worker 0 deletes the VM (and its queued resource)
                           once main.py exits 0, not after a preemption
  --wait_timeout=S         wait at most S seconds for main.py's first step
                           (default 1800: it includes compilation)
  --no_wait                return once main.py is started
  --repo=URL               git URL the workers clone (default: origin remote)
  --ref=REF                branch, tag or commit (default: this checkout's HEAD)
  --tfds_data_dir=gs://..  TFDS_DATA_DIR for main.py
  --python=python3.11      Python for the venv (installed with apt if missing)
  --expected_devices=N     override the expected jax.device_count()
  --worker=0|all           (logs) which worker's log to follow
  --dry-run                run the local check, print the commands, run nothing
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
queued=0
queue_timeout=3600
delete_when_done=0
wait_timeout=1800
no_wait=0
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
    --queued) queued=1 ;;
    --queue_timeout=*) queue_timeout=${1#*=}; launch_only+=(--queue_timeout) ;;
    --delete_when_done) delete_when_done=1; launch_only+=(--delete_when_done) ;;
    --wait_timeout=*) wait_timeout=${1#*=}; launch_only+=(--wait_timeout) ;;
    --no_wait) no_wait=1; launch_only+=(--no_wait) ;;
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
      --tfds_data_dir | --python | --expected_devices | --queue_timeout | --wait_timeout)
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
# What deletes the VM: with --queued, the queued resource with its node.
if ((queued)); then
  delete_cmd=(gcloud compute tpus queued-resources delete "$name" "${gcloud_flags[@]}" --quiet --force)
else
  delete_cmd=(gcloud compute tpus tpu-vm delete "$name" "${gcloud_flags[@]}" --quiet)
fi
delete_hint="launch/tpu_vm.sh delete --name=$name --zone=$zone${project:+ --project=$project}"
((!queued)) || delete_hint+=" --queued"
logs_hint="launch/tpu_vm.sh logs --name=$name --zone=$zone${project:+ --project=$project}"

if [[ $subcommand != launch ]]; then
  if ((${#launch_only[@]})) || ((${#main_args[@]})); then
    takes='--name, --zone, --project and --worker'
    [[ $subcommand == logs ]] || takes='--name, --zone, --project and --queued'
    usage_error "'$subcommand' takes only $takes (got ${launch_only[0]:-main.py arguments})"
  fi
  [[ $subcommand == logs || -z $worker ]] || usage_error "--worker is only for 'logs'"
  [[ $subcommand == delete || $queued == 0 ]] || usage_error "--queued is only for launching and 'delete'"
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
    run "${delete_cmd[@]}"
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
[[ $wait_timeout =~ ^[1-9][0-9]{0,6}$ ]] || usage_error "bad --wait_timeout=$wait_timeout: seconds, at least 1"
[[ $queue_timeout =~ ^[0-9]{1,7}$ ]] || usage_error "bad --queue_timeout=$queue_timeout: seconds"
if ((no_wait)) && [[ " ${launch_only[*]} " == *" --wait_timeout "* ]]; then
  usage_error "--no_wait and --wait_timeout exclude each other"
fi
if ((!queued)) && [[ " ${launch_only[*]} " == *" --queue_timeout "* ]]; then
  usage_error "--queue_timeout is only for --queued"
fi

require_gs_workdir "all workers write it; a preempted VM loses its disk" "${main_args[@]}"

ref_given=$ref
default_repo_and_ref "the workers"
if [[ -z $ref_given && -n $(git -C "$REPO_ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
  warnings+=("uncommitted changes in $REPO_ROOT are not sent to the workers")
fi

# Nothing is created before this check passes (nor printed, in a dry run).
local_check "${main_args[@]}" "--device_count=$expected_devices"
print_check "$dry_run"
print_warnings

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

# What runs main.py in the background on each worker (`sh -c`, POSIX): it
# writes main.py's exit code to ~/diffusion_distill.rc and, when DD_DELETE is
# set (--delete_when_done), on worker 0 after an exit 0 that was no
# preemption, runs DD_DELETE. A failed delete is an `error:` line in the log.
# It ignores SIGTERM (a maintenance or preemption notice is main.py's to
# handle) only after main.py has started, which keeps its own handling.
# shellcheck disable=SC2016
runner_body=(
  '.venv/bin/python main.py "$@" </dev/null & pid=$!'
  'trap "" TERM'
  'rc=0'
  'wait "$pid" || rc=$?'
  'echo "$rc" >"$HOME/diffusion_distill.rc"'
  'if [ -z "$DD_DELETE" ]; then exit "$rc"; fi'
  'w=$(curl -sf -m 10 -H "Metadata-Flavor: Google" http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number) || w=""'
  'if [ -z "$w" ]; then echo "=== $(date -u) --delete_when_done: cannot read the worker number (agent-worker-number) from the metadata server: not deleting the TPU VM"; exit "$rc"; fi'
  'if [ "$w" != 0 ]; then exit "$rc"; fi'
  'if [ "$rc" != 0 ]; then echo "=== $(date -u) --delete_when_done: main.py exited with code $rc: not deleting the TPU VM"; exit "$rc"; fi'
  'if tail -n 20 "$HOME/diffusion_distill.log" | grep -q "^preempted: "; then echo "=== $(date -u) --delete_when_done: main.py was preempted: not deleting the TPU VM (launch again to resume)"; exit 0; fi'
  'echo "=== $(date -u) main.py finished: deleting the TPU VM: $DD_DELETE"'
  'if eval "$DD_DELETE"; then echo "=== $(date -u) deletion of the TPU VM requested"; else echo "error: --delete_when_done: deleting the TPU VM failed (exit code $?): it keeps running; delete it yourself"; fi'
)
runner=$(join '; ' "${runner_body[@]}")
# --async: the VM goes away while gcloud waits; the request is what counts.
delete_on_worker=''
if ((delete_when_done)); then
  delete_on_worker=$(quote_cmd "${delete_cmd[@]}" --async)
fi

# shellcheck disable=SC2016
start_body=(
  'set -eu'
  'LOG="$HOME/diffusion_distill.log"'
  'PID="$HOME/diffusion_distill.pid"'
  'if [ -f "$PID" ] && kill -0 "$(cat "$PID")" 2>/dev/null; then echo "$(hostname): main.py is already running (pid $(cat "$PID")), see $LOG" >&2; exit 1; fi'
  'cd "$HOME/diffusion_distill"'
  'rm -f "$HOME/diffusion_distill.rc"'
  'touch "$LOG"'
  'wc -c <"$LOG" >"$HOME/diffusion_distill.offset"'
  'echo "=== $(date -u) main.py $*" >>"$LOG"'
  'export DD_DELETE'
  'nohup sh -c "$RUNNER" main.py "$@" >>"$LOG" 2>&1 </dev/null & echo $! >"$PID"'
  'echo "$(hostname): started main.py (pid $(cat "$PID")), log $LOG"'
)
# --multihost: jax.distributed.initialize() finds the slice's hosts, and its
# preemption notice makes every host save the same step on SIGTERM.
start="set -- $(quote_cmd "${main_args[@]}") --multihost"
[[ -z $tfds_data_dir ]] || start+="; export TFDS_DATA_DIR=$(quote "$tfds_data_dir")"
start+="; DD_DELETE=$(quote "$delete_on_worker") RUNNER=$(quote "$runner")"
start+="; $(join '; ' "${start_body[@]}")"

# Worker 0, after the start: waits until this run's part of the log (from the
# offset the start recorded) says `first step done` (exit 0), or `error:`, or
# main.py has stopped (exit WAIT_FAILED; exit 0 if it finished with code 0),
# at most T seconds (exit WAIT_TIMEOUT); then prints that part's tail.
# shellcheck disable=SC2016
wait_body=(
  'set -u'
  'LOG="$HOME/diffusion_distill.log"'
  'PID="$HOME/diffusion_distill.pid"'
  'RC="$HOME/diffusion_distill.rc"'
  'OFF=$(cat "$HOME/diffusion_distill.offset" 2>/dev/null || echo 0)'
  'this_run() { tail -c +"$((OFF + 1))" "$LOG" 2>/dev/null; }'
  'end=$(($(date +%s) + T))'
  's=timeout'
  'while :; do alive=0; if [ ! -f "$RC" ] && [ -f "$PID" ] && kill -0 "$(cat "$PID")" 2>/dev/null; then alive=1; fi; if this_run | grep -q "first step done"; then s=ok; break; fi; if this_run | grep -q "^error: "; then s=failed; break; fi; if [ "$alive" = 0 ]; then s=stopped; break; fi; if [ "$(date +%s)" -ge "$end" ]; then break; fi; sleep "$P"; done'
  'echo "--- $(hostname): the last lines of $LOG"'
  'this_run | tail -n 30'
  'echo "---"'
  'rc=$(cat "$RC" 2>/dev/null || echo unknown)'
  'case $s in ok) echo "main.py logged its first step on worker 0"; exit 0 ;; failed) exit '"$WAIT_FAILED"' ;; stopped) if [ "$rc" = 0 ] && ! this_run | tail -n 20 | grep -q "^preempted: "; then echo "main.py finished (exit code 0) on worker 0"; exit 0; fi; echo "main.py stopped (exit code $rc) before its first step on worker 0"; exit '"$WAIT_FAILED"' ;; esac'
  'echo "no first step after $T s: main.py is still running on worker 0"'
  'exit '"$WAIT_TIMEOUT"
)
wait_script=$(join '; ' "${wait_body[@]}")

if ((queued)); then
  create=(gcloud compute tpus queued-resources create "$name" "--node-id=$name"
    "${gcloud_flags[@]}" "--accelerator-type=$accelerator" "--runtime-version=$version")
else
  create=(gcloud compute tpus tpu-vm create "$name" "${gcloud_flags[@]}"
    "--accelerator-type=$accelerator" "--version=$version")
fi
if ((spot)); then
  create+=(--spot)
fi
describe_vm=(gcloud compute tpus tpu-vm describe "$name" "${gcloud_flags[@]}"
  '--format=value(state,acceleratorType)')
describe_queued=(gcloud compute tpus queued-resources describe "$name" "${gcloud_flags[@]}"
  '--format=value(state.state)')
ssh_all=(gcloud compute tpus tpu-vm ssh "$name" "${gcloud_flags[@]}" --worker=all)
ssh_0=(gcloud compute tpus tpu-vm ssh "$name" "${gcloud_flags[@]}" --worker=0)
steps=5
((!no_wait)) || steps=4

# Reuses a READY VM of this accelerator type ($1: "STATE TYPE" from
# describe_vm); anything else stops the launch.
require_ready_vm() {
  local state existing_type
  read -r state existing_type <<<"$1"
  [[ $existing_type == "$accelerator" ]] ||
    fail "TPU VM $name exists with accelerator $existing_type, not $accelerator"
  [[ $state == READY ]] ||
    fail "TPU VM $name is $state. Delete it ($delete_hint) and launch again: main.py resumes from $workdir"
}

# Polls the queued resource until it is ACTIVE: FAILED, SUSPENDED (and the
# states on their way there) or --queue_timeout stop the launch.
wait_until_active() {
  local deadline=$((SECONDS + queue_timeout)) state last='' misses=0
  while :; do
    state=$("${describe_queued[@]}" 2>/dev/null) || state=''
    if [[ -z $state ]]; then
      ((++misses < 3)) || fail "cannot describe queued resource $name (3 tries): see gcloud compute tpus queued-resources list ${gcloud_flags[*]}"
    else
      misses=0
      [[ $state == "$last" ]] || echo "queued resource $name: $state" >&2
      last=$state
    fi
    case $state in
      ACTIVE) return 0 ;;
      FAILED | SUSPENDING | SUSPENDED | DELETING)
        fail "queued resource $name is $state: delete it ($delete_hint) and launch again" ;;
    esac
    ((SECONDS < deadline)) ||
      fail "queued resource $name is still ${last:-unknown} after $queue_timeout s; it stays queued: run the same command again to keep waiting, or delete it ($delete_hint)"
    sleep "$QUEUE_POLL_S"
  done
}

if ((queued)); then
  step "1/$steps create the TPU VM through a queued resource (skipped when it exists), then wait until it is ACTIVE (at most $queue_timeout s; FAILED or SUSPENDED: stop)"
else
  step "1/$steps create the TPU VM (skipped when it exists and is READY)"
fi
if ((dry_run)); then
  run "${create[@]}"
  ((!queued)) || run "${describe_queued[@]}"
elif ((queued)); then
  qstate=$("${describe_queued[@]}" 2>/dev/null) || qstate=''
  vm=''
  if [[ -n $qstate ]]; then
    echo "queued resource $name exists ($qstate)" >&2
  else
    vm=$("${describe_vm[@]}" 2>/dev/null) || vm=''
    # A VM of that name made without --queued is reused as such.
    [[ -n $vm ]] || run "${create[@]}"
  fi
  if [[ -z $vm ]]; then
    wait_until_active
    vm=$("${describe_vm[@]}" 2>/dev/null) ||
      fail "queued resource $name is ACTIVE, but its TPU VM cannot be described"
  fi
  require_ready_vm "$vm"
  echo "TPU VM $name is READY" >&2
else
  vm=$("${describe_vm[@]}" 2>/dev/null) || vm=''
  if [[ -z $vm ]]; then
    run "${create[@]}"
  else
    require_ready_vm "$vm"
    echo "TPU VM $name exists and is READY: reusing it" >&2
  fi
fi

step "2/$steps install $repo @ $ref and a venv on every worker"
run "${ssh_all[@]}" "--command=$bootstrap" || fail "installing on the workers failed (see above)"

step "3/$steps every worker must see jax.device_count() == $expected_devices"
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

step "4/$steps start main.py on every worker (log: ~/diffusion_distill.log)${delete_on_worker:+; worker 0 deletes the VM once main.py exits 0}"
run "${ssh_all[@]}" "--command=$start" || fail "starting main.py failed (see above)"
if ((no_wait)); then
  ((dry_run)) || echo "started. Follow worker 0: $logs_hint" >&2
  exit 0
fi

step "5/5 wait until main.py on worker 0 logs its first step or fails (at most $wait_timeout s), and print its log's tail"
if ((dry_run)); then
  run "${ssh_0[@]}" "--command=T=$wait_timeout P=$LOG_POLL_S; $wait_script"
  exit 0
fi
deadline=$((SECONDS + wait_timeout))
tries=0
while :; do
  left=$((deadline - SECONDS))
  ((left > 0)) || left=0
  rc=0
  run "${ssh_0[@]}" "--command=T=$left P=$LOG_POLL_S; $wait_script" || rc=$?
  case $rc in
    0) break ;;
    "$WAIT_FAILED") fail "main.py failed on worker 0 (its log's tail is above); more: $logs_hint" ;;
    "$WAIT_TIMEOUT") fail "main.py logged no first step on worker 0 within $wait_timeout s; it is still running: follow it with $logs_hint" ;;
    *)
      ((++tries < 3 && left > 0)) ||
        fail "cannot watch main.py on worker 0 (ssh exit code $rc); it may be running: follow it with $logs_hint"
      echo "warning: ssh to worker 0 exited $rc; trying again" >&2
      sleep "$LOG_POLL_S"
      ;;
  esac
done
echo "running. Follow worker 0: $logs_hint" >&2
