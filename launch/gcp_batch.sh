#!/usr/bin/env bash
# Runs main.py as a GPU job on Google Cloud Batch (Spot VMs by default).
#
#   launch/gcp_batch.sh [--dry-run] --name=N --region=R [--project=P] \
#       [--machine_type=a2-highgpu-8g] [--accelerator=nvidia-tesla-a100] \
#       [--accelerator_count=8] [--image=URI [--code_dir=DIR] | --boot_image=IMAGE] \
#       [--tfds_data_dir=gs://...] -- --config=configs/cifar10_distill.py \
#       --workdir=gs://BUCKET/DIR [--config.x.y=value ...]
#
# Renders launch/gcp_batch_job.json (with python3 and json) and submits it
# with `gcloud batch jobs submit`. See launch/README.md for the retry policy.
# Before it submits anything (--dry-run included) it runs `main.py MAIN_ARGS
# --check_local` here. --dry-run prints the job JSON and the gcloud command
# instead. Bad usage, or a command the local check rejects: one line
# "error: ..." on stderr and exit 2.

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT

usage() {
  cat <<'EOF'
Usage:
  launch/gcp_batch.sh [--dry-run] --name=N --region=R [options] -- MAIN_ARGS...

Runs `main.py MAIN_ARGS --check_local` here first (the Python: $DD_LOCAL_PYTHON,
else python3 on PATH); a rejected command submits nothing. Then submits one
Batch job: one task on one GPU VM that installs the code (unless --code_dir),
checks that JAX sees the GPUs, and runs `python main.py MAIN_ARGS`. MAIN_ARGS
must hold --workdir=gs://... Preempted or interrupted tasks are retried and
resume from the workdir.

Options:
  --region=R                 Batch location, e.g. us-central1
  --project=P                Google Cloud project (default: gcloud's)
  --machine_type=T           default a2-highgpu-8g
  --accelerator=TYPE         default nvidia-tesla-a100
  --accelerator_count=N      default 8 (JAX must see N GPUs)
  --provisioning=spot|standard   default spot
  --max_retries=N            retries of the task, 0-10 (default 5)
  --image=URI                run in this container (needs bash; git and
                             Python >= 3.11 too unless --code_dir)
  --code_dir=DIR             with --image: the project is installed at DIR in
                             the image, so nothing is cloned or installed
  --boot_image=IMAGE         VM image for a script job, e.g. a Deep Learning
                             VM image (projects/deeplearning-platform-release/
                             global/images/family/...); default: Batch's
  --install_gpu_drivers=true|false   default true (false for images with drivers)
  --repo=URL, --ref=REF      code to clone (default: origin remote, HEAD)
  --python=PY                Python for the venv (default: first >= 3.11 found)
  --tfds_data_dir=gs://...   TFDS_DATA_DIR for main.py
  --job_json=PATH            where the rendered job goes
                             (default: ${TMPDIR:-/tmp}/NAME.batch.json)
  --dry-run                  run the local check, print the job JSON and the
                             command, submit nothing
EOF
}

# shellcheck source=SCRIPTDIR/common.sh
source "$REPO_ROOT/launch/common.sh"

dry_run=0
name=''
region=''
project=''
machine_type=a2-highgpu-8g
accelerator=nvidia-tesla-a100
accelerator_count=8
provisioning=spot
max_retries=5
image=''
code_dir=''
boot_image=''
install_gpu_drivers=true
repo=''
ref=''
python=''
tfds_data_dir=''
template="$REPO_ROOT/launch/gcp_batch_job.json"
job_json=''
main_args=()

while (($#)); do
  case $1 in
    --) shift; main_args=("$@"); break ;;
    -h | --help) usage; exit 0 ;;
    --dry-run | --dry_run) dry_run=1 ;;
    --name=*) name=${1#*=} ;;
    --region=* | --location=*) region=${1#*=} ;;
    --project=*) project=${1#*=} ;;
    --machine_type=*) machine_type=${1#*=} ;;
    --accelerator=*) accelerator=${1#*=} ;;
    --accelerator_count=*) accelerator_count=${1#*=} ;;
    --provisioning=*) provisioning=${1#*=} ;;
    --spot) provisioning=spot ;;
    --max_retries=*) max_retries=${1#*=} ;;
    --image=*) image=${1#*=} ;;
    --code_dir=*) code_dir=${1#*=} ;;
    --boot_image=*) boot_image=${1#*=} ;;
    --install_gpu_drivers=*) install_gpu_drivers=${1#*=} ;;
    --repo=*) repo=${1#*=} ;;
    --ref=*) ref=${1#*=} ;;
    --python=*) python=${1#*=} ;;
    --tfds_data_dir=*) tfds_data_dir=${1#*=} ;;
    --template=*) template=${1#*=} ;;
    --job_json=*) job_json=${1#*=} ;;
    --name | --region | --location | --project | --machine_type | --accelerator | \
      --accelerator_count | --provisioning | --max_retries | --image | --code_dir | \
      --boot_image | --install_gpu_drivers | --repo | --ref | --python | \
      --tfds_data_dir | --template | --job_json)
      usage_error "$1 needs a value: $1=..." ;;
    *) usage_error "unknown argument: $1 (main.py arguments go after --; see --help)" ;;
  esac
  shift
done

[[ -n $name ]] || usage_error "--name=N is required"
[[ $name =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] ||
  usage_error "bad --name=$name: lowercase letters, digits and '-', starting with a letter, at most 63"
[[ -n $region ]] || usage_error "--region=R is required (e.g. --region=us-central1)"
[[ $region =~ ^[a-z]+-[a-z]+[0-9]+$ ]] || usage_error "bad --region=$region (e.g. us-central1)"
[[ $machine_type =~ ^[a-z0-9-]+$ ]] || usage_error "bad --machine_type=$machine_type"
[[ $accelerator =~ ^nvidia-[a-z0-9-]+$ ]] || usage_error "bad --accelerator=$accelerator (e.g. nvidia-tesla-a100)"
[[ $accelerator_count =~ ^[1-9][0-9]*$ ]] || usage_error "bad --accelerator_count=$accelerator_count"
case $provisioning in
  spot | SPOT) provisioning=SPOT ;;
  standard | STANDARD) provisioning=STANDARD ;;
  *) usage_error "bad --provisioning=$provisioning: spot or standard" ;;
esac
[[ $max_retries =~ ^([0-9]|10)$ ]] || usage_error "bad --max_retries=$max_retries: 0 to 10"
[[ $install_gpu_drivers == true || $install_gpu_drivers == false ]] ||
  usage_error "bad --install_gpu_drivers=$install_gpu_drivers: true or false"
[[ -z $code_dir || -n $image ]] || usage_error "--code_dir needs --image (a container with the project at DIR)"
[[ -z $image || -z $boot_image ]] || usage_error "--image and --boot_image exclude each other"
[[ -z $python || $python =~ ^[A-Za-z0-9_./-]+$ ]] || usage_error "bad --python=$python"
if [[ -n $tfds_data_dir && $tfds_data_dir != gs://?* ]]; then
  usage_error "--tfds_data_dir must be a gs:// path, got: $tfds_data_dir"
fi
[[ -f $template ]] || usage_error "no job template at $template"
job_json=${job_json:-${TMPDIR:-/tmp}/$name.batch.json}

require_gs_workdir "a retried task may run on another VM" "${main_args[@]}"

if [[ -z $code_dir ]]; then
  default_repo_and_ref "the job"
fi

# Nothing is submitted before this check passes (nor printed, in a dry run).
local_check "${main_args[@]}" "--device_count=$accelerator_count" \
  "--local_device_count=$accelerator_count"

# The task: runs on the VM (script job) or in the container (--image).
# @SETTINGS@ becomes REPO=, REF=, PY=, CODE_DIR=, EXPECTED_DEVICES= and
# `set -- MAIN_ARGS`. Exit 75 after a SIGTERM: the lifecycle policy retries it.
IFS= read -r -d '' task_template <<'EOF' || true
#!/bin/bash
# diffusion_distill Batch task, rendered by launch/gcp_batch.sh.
set -eu
@SETTINGS@
# SIGTERM (e.g. Spot preemption) while installing: exit 75, i.e. retry.
trap 'echo "SIGTERM before main.py started: exit 75 (retry)" >&2; exit 75' TERM
if [ -z "$PY" ]; then
  for p in python3.13 python3.12 python3.11 python3; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      PY=$p
      break
    fi
  done
  if [ -z "$PY" ]; then
    echo "error: no Python >= 3.11 here: pass --python, --boot_image or --image" >&2
    exit 1
  fi
fi
if [ -n "$CODE_DIR" ]; then
  cd "$CODE_DIR"
  PYTHON=$PY
else
  D="${HOME:-/root}/diffusion_distill"
  if [ -d "$D/.git" ]; then git -C "$D" remote set-url origin "$REPO"; else git clone --quiet "$REPO" "$D"; fi
  git -C "$D" fetch --quiet origin "$REF"
  git -C "$D" checkout --quiet --detach FETCH_HEAD
  if [ ! -x "$D/.venv/bin/pip" ]; then
    rm -rf "$D/.venv"
    if ! "$PY" -m venv "$D/.venv" >/dev/null 2>&1; then
      SUDO=''
      [ "$(id -u)" = 0 ] || SUDO=sudo
      $SUDO apt-get update -qq
      $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$(basename "$PY")-venv"
      rm -rf "$D/.venv"
      "$PY" -m venv "$D/.venv"
    fi
  fi
  "$D/.venv/bin/pip" install --quiet --upgrade pip
  "$D/.venv/bin/pip" install --quiet -c "$D/constraints.txt" -e "$D" "jax[cuda12]"
  cd "$D"
  PYTHON="$D/.venv/bin/python"
fi
found=$("$PYTHON" -c 'import jax; print(jax.default_backend(), jax.device_count())' | tail -n 1)
echo "jax: $found (expected: gpu $EXPECTED_DEVICES)"
case $found in
  "gpu $EXPECTED_DEVICES" | "cuda $EXPECTED_DEVICES") ;;
  *) echo "error: JAX sees '$found', expected $EXPECTED_DEVICES GPUs" >&2; exit 1 ;;
esac
# main.py saves a checkpoint on SIGTERM and exits 0: forward the signal, then
# exit 75 so that Batch retries the task, which resumes from the workdir.
interrupted=0
pid=''
trap 'interrupted=1; if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; fi' TERM INT
"$PYTHON" main.py "$@" &
pid=$!
if [ "$interrupted" = 1 ]; then kill -TERM "$pid" 2>/dev/null || true; fi
rc=0
wait "$pid" || rc=$?
while kill -0 "$pid" 2>/dev/null; do
  rc=0
  wait "$pid" || rc=$?
done
if [ "$interrupted" = 1 ]; then
  echo "interrupted by SIGTERM (main.py exited $rc): exit 75 so that Batch retries" >&2
  exit 75
fi
exit "$rc"
EOF

# Fills the template's "@KEY@" strings with typed values; a value of None
# drops its key (and objects left empty).
render() {
  python3 - "$template" "$@" <<'EOF'
import json
import shlex
import sys

template, *args = sys.argv[1:]
sep = args.index('--')
opts = dict(a.split('=', 1) for a in args[:sep])
main_args = args[sep + 1:]

settings = [f'{k}={shlex.quote(opts[k.lower()])}'
            for k in ('REPO', 'REF', 'PY', 'CODE_DIR')]
settings.append(f'EXPECTED_DEVICES={int(opts["accelerator_count"])}')
settings.append('set -- ' + ' '.join(shlex.quote(a) for a in main_args))
script = opts['task_template'].replace('@SETTINGS@', '\n'.join(settings), 1)
if opts['image']:
  runnable = {'container': {'imageUri': opts['image'],
                            'entrypoint': '/bin/bash',
                            'commands': ['-c', script]}}
else:
  runnable = {'script': {'text': script}}
values = {
    'RUNNABLE': runnable,
    'TFDS_DATA_DIR': opts['tfds_data_dir'] or None,
    'MAX_RETRIES': int(opts['max_retries']),
    'INSTALL_GPU_DRIVERS': opts['install_gpu_drivers'] == 'true',
    'MACHINE_TYPE': opts['machine_type'],
    'PROVISIONING_MODEL': opts['provisioning'],
    'ACCELERATOR_TYPE': opts['accelerator'],
    'ACCELERATOR_COUNT': int(opts['accelerator_count']),
    'BOOT_IMAGE': opts['boot_image'] or None,
}


def fill(node):
  if isinstance(node, str) and len(node) > 2 and node[0] == node[-1] == '@':
    if node[1:-1] not in values:
      sys.exit(f'error: unknown placeholder {node} in {template}')
    return values[node[1:-1]]
  if isinstance(node, dict):
    filled = {k: fill(v) for k, v in node.items()}
    return {k: v for k, v in filled.items() if v is not None and v != {}}
  if isinstance(node, list):
    return [v for v in map(fill, node) if v is not None]
  return node


with open(template) as f:
  print(json.dumps(fill(json.load(f)), indent=2))
EOF
}

job=$(render "task_template=$task_template" "repo=$repo" "ref=$ref" "py=$python" \
  "code_dir=$code_dir" "accelerator_count=$accelerator_count" "image=$image" \
  "tfds_data_dir=$tfds_data_dir" "max_retries=$max_retries" \
  "install_gpu_drivers=$install_gpu_drivers" "machine_type=$machine_type" \
  "provisioning=$provisioning" "accelerator=$accelerator" "boot_image=$boot_image" \
  -- "${main_args[@]}") || fail "rendering $template failed"

submit=(gcloud batch jobs submit "$name" "--location=$region")
[[ -z $project ]] || submit+=("--project=$project")
submit+=("--config=$job_json")

print_check "$dry_run"
print_warnings
if ((dry_run)); then
  echo "# $provisioning VM $machine_type with $accelerator_count x $accelerator;" \
    "task retried (up to $max_retries times) on exit codes 50001, 50002, 75"
  echo "cat >$(quote "$job_json") <<'JOB_JSON'"
  printf '%s\n' "$job"
  echo "JOB_JSON"
  quote_cmd "${submit[@]}"
  echo
  exit 0
fi

printf '%s\n' "$job" >"$job_json"
echo "+ $(quote_cmd "${submit[@]}")" >&2
"${submit[@]}" || fail "gcloud batch jobs submit failed (job config: $job_json)"
status=(gcloud batch jobs describe "$name" "--location=$region")
[[ -z $project ]] || status+=("--project=$project")
echo "submitted. Status: $(quote_cmd "${status[@]}")" >&2
