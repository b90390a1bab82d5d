"""The printed summary of a run: one block per section."""

from benchmarks.speed.report import fmt
from diffusion_distill import machine

_AT_LEAST = ('step', 'dispatch', 'pipeline')


def _load(run) -> str:
  b, a = run.get('load_before'), run.get('load_after')
  return '?' if not (b and a) else f'{b[0]:.2f}/{a[0]:.2f}'


def _step_line(name, r) -> str:
  ratio = r.get('ratio')
  return (f'  {name:<26} batch {r["batch_size"]:>3} k={r["steps_per_dispatch"]:<2}'
          f' {r["images_per_s"]:9.1f} img/s, step {r["step_s"] * 1e3:8.1f} ms,'
          f' {(r.get("flops_per_example") or 0) / 1e9:6.2f} GFLOP/example, '
          f'ratio to matmul {"-" if ratio is None else f"{ratio:.3f}"}, '
          f'compile {r["compile_s"]:.1f} s')


def _matmul(e):
  return [f'  {d}: {r["flops_per_s"] / 1e9:.1f} GFLOP/s (n={r["size"]})'
          for d, r in e['rows'].items()]


def _step(e):
  lines = [_step_line(k, r) for k, r in e['entries'].items()]
  lines += [f'  not measured: {m["row"]} ({m["why"]})'
            for m in e.get('not_measured', [])]
  return lines


def _dispatch(e):
  return [_step_line(k, r) + f', img/s vs k=1 {r["images_per_s_vs_k1"]:.3f}'
          for k, r in e['rows'].items()]


def _sampling(e):
  lines = []
  for variant in ('host_params', 'device_params'):
    v = e[variant]
    lines.append(f'  {variant:<14} ' + ', '.join(
        f'N={n}: {r["ratio"]:.3f}' for n, r in v['per_num_steps'].items()) + (
            f'; fit per-step ratio {v["fit_per_step_ratio"]:.3f}, fixed '
            f'{v["fit_fixed_seconds"] * 1e3:.2f} ms'
            if 'fit_per_step_ratio' in v else ''))
  first = next(iter(e['host_params']['per_num_steps'].values()))
  lines.append(f'  network eval {first["network_eval"]["median_s"] * 1e3:.2f}'
               f' ms at batch {e["batch_size"]}')
  return lines


def _pipeline(e):
  return [f'  pipeline {e["images_per_s"]:.0f} img/s vs teacher step '
          f'{e["teacher_step_images_per_s"]:.0f} img/s; start-up '
          f'{e["startup_s"]:.2f} s']


def _distill_cost(e):
  lines = [f'  teacher {e["teacher"]["num_updates"]} steps x '
           f'{e["teacher"]["step_s"] * 1e3:.1f} ms, compile '
           f'{e["teacher"]["compile_s"]:.1f} s; rounds: ' + ', '.join(
               f'{r["num_student_steps"]}: {r["step_s"] * 1e3:.1f} ms'
               for r in e['rounds'])]
  for n, d in e['down_to'].items():
    lines.append(f'  down to {n} step(s), {d["num_rounds"]} rounds: steps '
                 f'only {d["ratio_step_time_only"]:.3f}, with compile '
                 f'{d["ratio_including_compile"]:.3f}')
  return lines


def _memory(e):
  b = e['state_bytes']
  marks = e.get('vm_hwm_bytes', e['ru_maxrss_bytes'])
  lines = [f'  params {b["params"] / 2**20:.0f} MiB ({b["num_params"]:,}), '
           f'EMA {b["ema_params"] / 2**20:.0f} MiB, Adam '
           f'{b["opt_state"] / 2**20:.0f} MiB; peak RSS after imports / '
           'compile / 2 steps: ' + ' / '.join(
               f'{v / 2**20:.0f}' for v in marks.values()) + ' MiB']
  dev = e.get('device_memory_stats') or {}
  if dev.get('peak_bytes_in_use') is not None:
    lines.append(f'  device peak_bytes_in_use '
                 f'{dev["peak_bytes_in_use"] / 2**20:.0f} MiB')
  return lines


def _sharding(e):
  lines = [f'  {e["num_devices"]} devices ({e["xla_flags"] or "no XLA_FLAGS"})']
  for k, r in e['rows'].items():
    lines.append(
        f'  {k:<26} pmap {r["pmap"]["time"]["median_s"] * 1e3:9.3f} ms, '
        f'shard_map {r["shard_map"]["time"]["median_s"] * 1e3:9.3f} ms, '
        f'pmap/shard_map {r["pmap_over_shard_map"]:.3f}, pmap - shard_map '
        f'{r["pmap_minus_shard_map_s"] * 1e6:.1f} us per call')
  return lines


def _profile(e):
  lines = []
  for name, r in e.get('rows', {}).items():
    shares = ', '.join(f'{k} {v:.0%}' for k, v in r['share_by_kind'].items()
                       if v)
    lines.append(f'  {name:<18} batch {r["batch_size"]:>3}: wall '
                 f'{r["wall_s_per_step"] * 1e3:.1f} ms/step, op time '
                 f'{r["op_s_per_step"] * 1e3:.1f} ms/step: {shares}')
  return lines


DETAILS = {'matmul': _matmul, 'step': _step, 'dispatch': _dispatch,
           'sampling': _sampling, 'pipeline': _pipeline,
           'distill_cost': _distill_cost, 'memory': _memory,
           'pmap_vs_shard_map': _sharding, 'profile': _profile}


def _header(meta) -> str:
  return (f'speed benchmark on {meta["machine"]}: '
          f'{machine.describe_short(meta["device"])}; jax '
          f'{meta["jax_version"]}, {meta["date"]}, load avg (1 min) '
          f'before/after {_load(meta)}')


def format_table(results: dict) -> str:
  """A readable summary of the results (the sections of this file)."""
  lines = [_header(results['meta'])]
  row = '{:<40} {:>14} {:>8} {:>5}  {}'
  lines.append(row.format('section', 'value', 'goal', 'met', 'load b/a'))
  for name, e in results['sections'].items():
    goal = '-' if e['goal'] is None else (
        ('>= ' if name in _AT_LEAST else '<= ') + f'{e["goal"]:g}')
    lines.append(row.format(name, fmt(e['value'], e['units']), goal,
                            fmt(e['met']), _load(e.get('run', {}))))
    if 'error' in e:
      lines.append('  ERROR: ' + e['error'].strip().splitlines()[-1])
    elif name in DETAILS:
      lines += DETAILS[name](e)
  return '\n'.join(lines)
