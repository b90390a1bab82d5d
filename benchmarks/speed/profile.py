"""Section `profile`: where a training step's time goes, by kind of work.

The digits teacher step and the CIFAR-10 teacher step (at --cifar_batch)
each run a few calls under jax.profiler.trace. XLA:CPU records one trace
event per operation it executes, named after its HLO instruction; the
compiled HLO says what that instruction does. Each event's time goes to the
first kind that fits: convolution, batched matmul (a dot with batch
dimensions: the attention blocks' QK^T and AV, and any other batched
einsum), dense matmul (the other dots: embeddings, projections), reduction
(GroupNorm statistics, the loss, norms), layout (copies, transposes, slices
and concatenations only), collective (the gradient all-reduce),
element-wise (everything else: activations, GroupNorm's scale and shift,
Adam, EMA). Loops, calls and conditionals get no kind: the operations in
their bodies are counted instead. Op time is the sum over the threads that
issue operations: it can exceed the wall time (operations in parallel) or
fall short of it (gaps between operations; work that an operation hands to
a thread pool counts once). CPU only: on an accelerator the events are
kernels, named otherwise.
"""

import collections
import glob
import os
import re
import tempfile
import time

import jax

from benchmarks.speed import build
from benchmarks.speed import report
from benchmarks.speed import training_step

KINDS = ('convolution', 'batched matmul', 'dense matmul', 'reduction',
         'layout', 'collective', 'element-wise')
_LAYOUT_OPS = {'copy', 'transpose', 'bitcast', 'reshape', 'slice',
               'concatenate', 'parameter', 'tuple', 'get-tuple-element',
               'dynamic-slice', 'dynamic-update-slice', 'pad', 'constant',
               'broadcast', 'iota'}
# Only these make a fusion of _LAYOUT_OPS a layout change.
_MOVES = {'copy', 'transpose', 'slice', 'concatenate', 'dynamic-slice',
          'dynamic-update-slice', 'pad'}
# Control flow: its body's operations have their own events.
_CONTROL = {'while', 'call', 'conditional'}
_COLLECTIVES = {'all-reduce', 'all-gather', 'reduce-scatter',
                'collective-permute', 'all-to-all'}
_HEADER = re.compile(r'^(?:ENTRY )?%?([\w.\-]+) \(.*\{$')
_INSTRUCTION = re.compile(
    r'^\s*(?:ROOT )?%?([\w.\-]+) = .*?\s([a-z][a-z0-9\-]*)\((.*)$')
_CALLS = re.compile(r'(?:calls|to_apply|body|condition|true_computation|'
                    r'false_computation)=%?([\w.\-]+)')


def _parse(hlo_text: str):
  """{computation: [(instruction, opcode, line)]} of compiled HLO text."""
  comps, current = {}, None
  for line in hlo_text.splitlines():
    header = _HEADER.match(line)
    if header:
      current = comps.setdefault(header.group(1), [])
      continue
    m = _INSTRUCTION.match(line)
    if m and current is not None:
      current.append((m.group(1), m.group(2), line))
  return comps


def _ops(comps, line, seen=None):
  """(opcode, line) of every instruction that `line` calls, transitively."""
  seen = set() if seen is None else seen
  for callee in _CALLS.findall(line):
    if callee in seen or callee not in comps:
      continue
    seen.add(callee)
    for _, opcode, inner in comps[callee]:
      yield opcode, inner
      yield from _ops(comps, inner, seen)


def kind_of(opcode: str, called: list) -> str:
  """The kind of an instruction from its opcode and the (opcode, line) of
  what it calls (a dot lists itself there, for its dimensions)."""
  opcodes = {opcode} | {o for o, _ in called}
  if 'convolution' in opcodes:
    return 'convolution'
  dots = [line for o, line in called if o == 'dot']
  if dots or opcode == 'dot':
    batched = any('lhs_batch_dims' in line for line in dots)
    return 'batched matmul' if batched else 'dense matmul'
  if opcodes & _COLLECTIVES:
    return 'collective'
  if opcodes & {'reduce', 'reduce-window'}:
    return 'reduction'
  if opcodes <= _LAYOUT_OPS | {'fusion'} and opcodes & _MOVES:
    return 'layout'
  return 'element-wise'


def instruction_kinds(hlo_text: str) -> dict:
  """{instruction name: kind} of every instruction in the HLO text."""
  comps = _parse(hlo_text)
  kinds = {}
  for body in comps.values():
    for name, opcode, line in body:
      if opcode in _CONTROL:
        continue
      called = list(_ops(comps, line))
      if opcode == 'dot':
        called.append(('dot', line))
      kinds[name] = kind_of(opcode, called)
  return kinds


def op_times(xplane_path: str, kinds: dict) -> dict:
  """Seconds per kind: the host plane's events named after an instruction."""
  out = collections.Counter()
  for plane in jax.profiler.ProfileData.from_file(xplane_path).planes:
    for line in plane.lines:
      for event in line.events:
        kind = kinds.get(event.name)
        if kind is not None:
          out[kind] += event.duration_ns * 1e-9
  return dict(out)


def profile_step(cs: build.CompiledStep, calls: int) -> dict:
  """`calls` calls of `cs` traced: wall and op time per step, by kind."""
  kinds = instruction_kinds(cs.compiled.as_text())
  jax.block_until_ready(cs.run())  # Warm: no allocation in the trace.
  with tempfile.TemporaryDirectory() as directory:
    t0 = time.perf_counter()
    with jax.profiler.trace(directory):
      for _ in range(calls):
        metrics = cs.run()
      jax.block_until_ready(metrics)
    wall = time.perf_counter() - t0
    path = sorted(glob.glob(os.path.join(directory, '**', '*.xplane.pb'),
                            recursive=True))[-1]
    times = op_times(path, kinds)
  steps = calls * cs.steps_per_dispatch
  total = sum(times.values())
  return {'steps': steps, 'batch_size': cs.batch_size,
          'wall_s_per_step': wall / steps,
          'op_s_per_step': total / steps,
          'op_s_per_step_by_kind': {k: times.get(k, 0.) / steps
                                    for k in KINDS},
          'share_by_kind': {k: times.get(k, 0.) / total if total else None
                            for k in KINDS}}


def section(ctx) -> dict:
  if ctx.platform != 'cpu':
    return report.entry(None, None, None, None,
                        'not measured: this section reads XLA:CPU events')
  rows = {'digits_teacher': profile_step(ctx.digits_step(1), calls=10)}
  cifar = training_step.build_row(ctx, 'cifar_teacher', 'teacher', 'float32')
  rows['cifar10_teacher'] = profile_step(cifar, calls=2)
  del cifar
  conv = rows['cifar10_teacher']['share_by_kind']['convolution']
  return report.entry(
      conv, None, None, 'share',
      'Per step, the time of the operations XLA:CPU executed, by kind '
      '(benchmarks/speed/profile.py), from a jax.profiler trace of a few '
      'calls: the digits teacher step at train.batch_size and the CIFAR-10 '
      'teacher step at --cifar_batch, float32, one device. Op time is '
      'summed over the threads that issue operations. '
      'value = the convolutions\' share of the CIFAR-10 step\'s op time.',
      rows=rows)
