"""What a run or a figure was measured on: the CPU or accelerator, the load,
the packages, the project's commit, and a tag for a result file's name."""

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys

import jax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'clu',
             'ml_collections', 'numpy', 'tensorflow', 'tensorflow-cpu',
             'tensorflow-datasets')


def cpu_model() -> str:
  """The host CPU's model name (/proc/cpuinfo, else sysctl or platform)."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  if sys.platform == 'darwin':
    try:
      return subprocess.run(
          ['sysctl', '-n', 'machdep.cpu.brand_string'], capture_output=True,
          text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
      pass
  return platform.processor() or platform.machine()


def cpu_cores() -> int:
  """CPU cores this process may run on."""
  if hasattr(os, 'sched_getaffinity'):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def load_average() -> list:
  """[1, 5, 15]-minute load averages (None where the OS has none)."""
  try:
    return list(os.getloadavg())
  except OSError:
    return None


def device_description() -> dict:
  """The device timed on (the first local one) and the host around it."""
  dev = jax.local_devices()[0]
  accelerator = None if dev.platform == 'cpu' else dev.device_kind
  return {'platform': dev.platform, 'device_kind': dev.device_kind,
          'accelerator': accelerator,
          'local_device_count': jax.local_device_count(),
          'host_cpu': cpu_model(), 'host_cpu_cores': cpu_cores(),
          'machine': platform.machine(),
          'xla_flags': os.environ.get('XLA_FLAGS', ''),
          'xla_python_client_preallocate': os.environ.get(
              'XLA_PYTHON_CLIENT_PREALLOCATE', '')}


def describe_short(device: dict) -> str:
  """One phrase: the accelerator, else the CPU model and its cores."""
  if device.get('accelerator'):
    return (f'{device["accelerator"]} x{device["local_device_count"]} '
            f'(host {device["host_cpu"]})')
  return f'{device["host_cpu"]}, {device["host_cpu_cores"]} cores, no accelerator'


def package_versions() -> dict:
  """Installed versions of the packages the timed code runs on."""
  out = {}
  for name in _PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return out


def machine_tag() -> str:
  """e.g. cpu-2core, gpu-nvidia-h200-x1: the default result file tag."""
  d = device_description()
  if d['platform'] == 'cpu':
    return f'cpu-{d["host_cpu_cores"]}core'
  kind = ''.join(c if c.isalnum() else '-' for c in d['device_kind'].lower())
  return f'{d["platform"]}-{kind.strip("-")}-x{d["local_device_count"]}'


def now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec='seconds')


def commit() -> str:
  """The project's commit: HEAD of the repository this package runs from,
  with '+changes' when the code differs from it (result files under
  benchmarks/results/ do not count); 'unknown' outside a git checkout."""
  def git(*args):
    return subprocess.run(['git', *args], cwd=REPO, capture_output=True,
                          text=True, check=True, timeout=30).stdout.strip()
  try:
    head = git('rev-parse', 'HEAD')
    dirty = git('status', '--porcelain', '--untracked-files=no', '--', '.',
                ':!benchmarks/results')
  except (OSError, subprocess.SubprocessError):
    return 'unknown'
  return head + ('+changes' if dirty else '')


def summary() -> dict:
  """The machine and software of a run, for WORKDIR/timing.json: CPU model
  and cores, device kind and count, JAX and jaxlib versions, the commit."""
  d = device_description()
  versions = package_versions()
  return {'cpu': d['host_cpu'], 'cpu_cores': d['host_cpu_cores'],
          'platform': d['platform'], 'device_kind': d['device_kind'],
          'device_count': jax.device_count(),
          'local_device_count': d['local_device_count'],
          'process_count': jax.process_count(),
          'jax': versions.get('jax'), 'jaxlib': versions.get('jaxlib'),
          'commit': commit()}
