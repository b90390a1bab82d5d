"""The evaluation stage: sample quality against the number of sampling steps.

For the teacher it sweeps `eval.sample_steps` with each of
`eval.teacher_samplers`; for every finished student it uses each of
`eval.student_samplers` at the student's own step count. Guided runs do so
at each guidance strength w of `eval.guidance`. Each row is one (model,
sampler, num_steps, seed, guidance) with the metric of `eval.num_samples`
samples, streamed in batches so memory does not grow with their number; on
digits also the label accuracy of class-conditional samples.

Writes WORKDIR/eval/results.{csv,json}, quality_vs_steps.png and, with
several w, guidance_tradeoff.png (and the same to TensorBoard). Rows already
in results.json are kept, so a re-run after an interruption only computes
what is missing. Its section is `eval`; its teacher is optional (a
workdir of students alone is evaluated too).
"""

import csv
import dataclasses
import io
import json
import logging
import os
import time
from typing import Any

from clu import metric_writers
from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from diffusion_distill import checkpoints
from diffusion_distill import dataset_info
from diffusion_distill import field_checks
from diffusion_distill import input_pipeline
from diffusion_distill import models
from diffusion_distill import preemption
from diffusion_distill import samplers
from diffusion_distill import teacher as teacher_lib
from diffusion_distill import timing
from diffusion_distill import layout
from diffusion_distill.evaluation import frechet
from diffusion_distill.evaluation import inception
from diffusion_distill.evaluation import metrics as metrics_lib
from diffusion_distill.field_checks import require
from diffusion_distill.stages import base
from diffusion_distill.stages import distill as distill_stage
from diffusion_distill.stages import teacher as teacher_stage

COLUMNS = ('model', 'sampler', 'num_steps', 'seed', 'guidance')
log = logging.getLogger(__name__)

NAME = 'eval'
SECTION = 'eval'
LOCAL_BATCH = True  # Each host samples its own batches.
MAKES_STUDENTS = False

RANGES = {
    'eval.num_samples': (field_checks.count(2), 'use 2 (a Frechet distance '
                         'needs at least 2 samples) to '
                         f'{field_checks.INT32_MAX} (int32)'),
    'eval.batch_size': (field_checks.count(1), field_checks.COUNT),
    'eval.num_reference': (field_checks.count(2), 'use 2 (reference '
                           'statistics need at least 2 images) to '
                           f'{field_checks.INT32_MAX} (int32)'),
    'eval.ancestral_noise_interp': (
        lambda v: field_checks.is_number(v) and 0 <= v <= 1,
        'use a value in [0, 1]'),
    'eval.num_seeds': (field_checks.count(1), field_checks.COUNT),
}
# Evaluation trains nothing: a re-run may change any of its fields.
FROZEN = ()


def check(config):
  e = config.eval
  steps = tuple(e.sample_steps)
  require(steps and all(field_checks.is_int(n) and
                        0 < n <= field_checks.INT32_MAX for n in steps),
          'eval.sample_steps', steps,
          f'give positive step counts up to {field_checks.INT32_MAX} '
          '(int32), e.g. (1, 4)')
  for field in ('teacher_samplers', 'student_samplers'):
    names = tuple(e[field])
    require(names and all(s in samplers.SAMPLERS for s in names),
            f'eval.{field}', names,
            f'each sampler must be one of {samplers.SAMPLERS}')
  require(isinstance(e.inception_weights, str), 'eval.inception_weights',
          e.inception_weights, 'give a path, or leave it empty for the default')


def check_files(config):
  """The Inception weights of a data set other than digits."""
  if config.dataset.name != 'digits':
    inception.load_inception_params(config.eval.inception_weights or None)


def teacher_need(config):
  """The run's teacher, if there is one (students are evaluated alone)."""
  del config
  return teacher_lib.Need(maker=teacher_stage.NAME, optional=True)


def _check_teacher(config, teacher):
  """A student as the teacher of evaluation is run at its own steps only."""
  if teacher.is_student:
    own = teacher.num_sample_steps
    steps = tuple(int(n) for n in config.eval.sample_steps)
    require(all(n == own for n in steps), 'eval.sample_steps', steps,
            f'{teacher.description} is a student distilled for {own} '
            'sampling steps (not a teacher to sweep over step counts): set '
            f'--config.eval.sample_steps="({own},)" or point '
            'distill.teacher_checkpoint to an undistilled teacher')


def _check_students(config, workdir):
  """Finished students that evaluation will read must be of config's data
  (and, evaluated with guidance, of a teacher that trained its null class)."""
  students = layout.finished_students(workdir)
  for n, student_dir in students:
    meta = checkpoints.Checkpointer(student_dir, read_only=True).restore_meta()
    if any(config.eval.guidance) and dataset_info.null_class_untrained(
        layout.config_from_meta(meta)):
      raise checkpoints.CheckpointError(
          f'the student distilled for {n} steps in {student_dir} cannot be '
          f'evaluated at config.eval.guidance={tuple(config.eval.guidance)}: '
          + dataset_info.UNTRAINED_NULL_CLASS)
    name = meta.get('dataset', {}).get('name', config.dataset.name)
    if name != config.dataset.name:
      raise checkpoints.CheckpointError(
          f'the student distilled for {n} steps in {student_dir} was trained '
          f'with dataset.name={name!r} but config.dataset.name='
          f'{config.dataset.name!r}, whose metric and reference images '
          f'evaluation uses: set --config.dataset.name={name}')
  return students


def check_sources(config, workdir, teacher, students_coming):
  """The teacher and the finished students it will read; something to
  evaluate (`students_coming`: a stage of this run makes students)."""
  if teacher_need(config).made_in(config):
    return
  if teacher is not None:
    _check_teacher(config, teacher)
  students = _check_students(config, workdir)
  if teacher is None and not students and not students_coming:
    raise checkpoints.CheckpointError(
        f'nothing to evaluate: --workdir={workdir} has no teacher checkpoint '
        'and no finished student, and config.distill.teacher_checkpoint is '
        f"unset; add '{teacher_stage.NAME}' or '{distill_stage.NAME}' to "
        'config.stages, or set --config.distill.teacher_checkpoint=PATH')


phase_plan = base.no_plan
student_steps = base.no_students


def resume_dirs(config, workdir):
  """None: rows already measured are in results.json."""
  del config, workdir
  return []


def directory(workdir):
  return layout.stage_dir(workdir, NAME)


def directories(workdir):
  """No sample grids: its outputs are in directory(workdir)."""
  del workdir
  return []


def _real_batches(config):
  """The unflipped training images, in [-1, 1] -> uint8 exactly as samples."""
  batch = config.eval.batch_size
  it = input_pipeline.create_train_iterator(
      config, batch_size=batch * jax.process_count(), start_step=0,
      seed=config.seed)
  seen = 0
  while seen < config.eval.num_reference:
    images = next(it)['image']
    images = images.reshape((-1,) + images.shape[2:])
    yield np.clip(np.round((images + 1.) * 127.5), 0, 255).astype(np.uint8)
    seen += images.shape[0] * jax.process_count()


def reference_stats(config, metric, eval_dir):
  """Feature statistics of the training data, cached in the workdir."""
  path = epath.Path(eval_dir) / (f'reference_{config.dataset.name}_'
                                 f'{metric.name}.npz')
  if path.exists():
    return frechet.RunningStats.from_npz(io.BytesIO(path.read_bytes()))
  if config.dataset.name == 'digits':
    # All 1,797 digits exactly once (the iterator would repeat some).
    stats, _ = metrics_lib.measure(metric,
                                   [input_pipeline.load_all_images(config)])
  else:
    stats, _ = metrics_lib.measure(metric, _real_batches(config))
  if jax.process_index() == 0:
    buf = io.BytesIO()
    stats.to_npz(buf)
    checkpoints.write_atomically(path, buf.getvalue())
  return stats


@dataclasses.dataclass(frozen=True)
class Row:
  """One row of the table to measure: the model, how it is sampled (the
  arguments of Sampler.sample_batches) and the seed."""
  model: str
  sampler: str
  num_steps: int
  seed: int
  guidance: float
  source: Any  # A resolved teacher.Teacher, or a student's checkpoint dir.
  num_samples: int  # Drawn by this process.
  batch_size: int
  noise_interp: float

  @property
  def key(self):
    """The row's values of COLUMNS: what results.json identifies it by."""
    return (self.model, self.sampler, self.num_steps, self.seed,
            self.guidance)


def plan_rows(config, teacher, students):
  """[Row]: what the sweep measures, in order.

  `teacher` is a resolved teacher or None; `students` the finished ones,
  [(num_sample_steps, checkpoint_dir)]. Guided runs sample every model at
  each w of eval.guidance, others at w = 0 only; each row once per seed.
  """
  e = config.eval
  ws = ([float(w) for w in e.guidance]
        if dataset_info.has_null_class(config) else [0.])
  measured = []
  if teacher is not None:
    for w in ws:
      for method in e.teacher_samplers:
        for n in e.sample_steps:
          measured.append(('teacher', method, int(n), w, teacher))
  for n, d in students:
    for w in ws:
      for method in e.student_samplers:
        measured.append(('student', method, int(n), w, d))
  per_process = -(-e.num_samples // jax.process_count())
  return [Row(name, method, n, seed, w, source, per_process, e.batch_size,
              e.ancestral_noise_interp)
          for name, method, n, w, source in measured
          for seed in range(config.seed, config.seed + e.num_seeds)]


class _Models:
  """One model's sampler in memory at a time; one compiled program per
  architecture, shared by the students (they differ in parameters only)."""

  def __init__(self):
    self._source, self._sampler, self._by_arch = None, None, {}

  def sampler(self, source):
    if source is self._source:
      return self._sampler
    self._sampler = None  # Frees the previous model's parameters first.
    if isinstance(source, teacher_lib.Teacher):
      config, params = source.config, teacher_lib.load(source)
      model, num_steps = models.create_model(config), source.num_sample_steps
    else:
      config, model, params, meta = layout.load_model(source)
      num_steps = meta.get('num_sample_steps')
    if model not in self._by_arch:
      self._by_arch[model] = layout.make_sampler(config, model, None)
    self._source = source
    self._sampler = self._by_arch[model].with_params(params, num_steps)
    return self._sampler


def _read_rows(path):
  """The rows of an earlier run; those written before guidance had w = 0."""
  path = epath.Path(path)
  rows = json.loads(path.read_text()) if path.exists() else []
  for r in rows:
    r.setdefault('guidance', 0.)
  return rows


def _measure_row(sampler, metric, reference, row: Row):
  rng = jax.random.fold_in(jax.random.PRNGKey(row.seed), jax.process_index())
  stats, class_stats = metrics_lib.measure(metric, sampler.sample_batches(
      rng, row.num_samples, row.batch_size, num_steps=row.num_steps,
      method=row.sampler, noise_interp=row.noise_interp,
      guidance=row.guidance or None))
  return {**dict(zip(COLUMNS, row.key)), 'num_samples': stats.count,
          **metric.summarize(stats, class_stats, reference)}


def evaluate(config, workdir, teacher=None):
  """Runs the sweep; returns the rows (dicts) of the results table.

  `teacher` is the resolved teacher to sweep (preflight's), or None to
  resolve it now if there is one.
  """
  need = teacher_need(config)
  if teacher is None and teacher_lib.exists(config, workdir, need):
    teacher = teacher_lib.resolve(config, workdir, need)
  eval_dir = directory(workdir)
  metric = metrics_lib.make_metric(config.dataset.name,
                                   config.eval.inception_weights)
  if jax.process_index() == 0:
    epath.Path(eval_dir).mkdir(parents=True, exist_ok=True)
  reference = reference_stats(config, metric, eval_dir)
  results_path = os.path.join(eval_dir, 'results.json')
  rows = _read_rows(results_path)
  done = {tuple(r[c] for c in COLUMNS) for r in rows}
  loaded = _Models()
  t0, measured, samples = time.time(), 0, 0
  for planned in plan_rows(config, teacher,
                           layout.finished_students(workdir)):
    if planned.key in done:
      continue
    if preemption.requested():  # Rows already measured are in results.json.
      raise preemption.Preempted(
          f'evaluation stopped on SIGTERM after {len(rows)} rows, saved in '
          f'{results_path}; run the same command to resume')
    row = _measure_row(loaded.sampler(planned.source), metric, reference,
                       planned)
    log.info('eval %s', row)
    rows.append(row)
    measured, samples = measured + 1, samples + row['num_samples']
    if jax.process_index() == 0:
      checkpoints.write_atomically(results_path,
                                   json.dumps(rows, indent=1).encode())
  if jax.process_index() == 0:
    write_outputs(rows, metric.name, eval_dir)
  if measured:
    timing.record(layout.timing_path(workdir), NAME, time.time() - t0,
                  rows=measured, samples=samples)
  return rows


def write_outputs(rows, metric_name, eval_dir):
  """results.csv (one row per evaluation), quality_vs_steps.png, TensorBoard."""
  columns = list(COLUMNS) + sorted(
      {k for r in rows for k in r} - set(COLUMNS))
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=columns)
  w.writeheader()
  for r in rows:
    w.writerow(r)
  checkpoints.write_atomically(os.path.join(eval_dir, 'results.csv'),
                               buf.getvalue().encode())
  writer = metric_writers.create_default_writer(eval_dir)
  for r in rows:
    writer.write_scalars(r['num_steps'], {
        f'{metric_name}/{r["model"]}_{r["sampler"]}': r[metric_name]})
  plots = {}
  if rows:
    plots['quality_vs_steps'] = plot_quality_vs_steps(
        [r for r in rows if not r['guidance']] or rows, metric_name)
  if len({r['guidance'] for r in rows}) > 1:
    plots['guidance_tradeoff'] = plot_guidance_tradeoff(rows, metric_name)
  for name, png in plots.items():
    checkpoints.write_atomically(os.path.join(eval_dir, f'{name}.png'), png)
    image = np.asarray(Image.open(io.BytesIO(png)).convert('RGB'))
    writer.write_images(0, {name: image[None]})
  writer.flush()


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _png(fig, plt):
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format='png')
  plt.close(fig)
  return buf.getvalue()


def _axis_label(metric_name):
  return {'fid': 'FID', 'fd_digits': 'FD-digits', 'label_accuracy':
          'label accuracy', 'inception_score': 'Inception Score'}[metric_name]


def _steps_label(model_name, n):
  return f'{model_name}, {n} step' + ('' if n == 1 else 's')


def _mean_std(values):
  """Mean and sample std (0 for one value) of `values`."""
  return (float(np.mean(values)),
          float(np.std(values, ddof=1)) if len(values) > 1 else 0.)


def plot_guidance_tradeoff(rows, metric_name):
  """PNG bytes: the metric against label accuracy (digits) or the Inception
  Score, one curve per model (the teacher at its most steps, each student,
  DDIM), one point per guidance strength w: the mean over seeds, with one
  std each way as error bars. Each w is written once, by the teacher's
  point."""
  plt = _pyplot()
  other = 'label_accuracy' if metric_name == 'fd_digits' else 'inception_score'
  ddim = [r for r in rows if r['sampler'] == 'ddim' and other in r]
  teacher_steps = max((r['num_steps'] for r in ddim if r['model'] == 'teacher'),
                      default=None)
  fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
  curves = sorted({(r['model'], r['num_steps']) for r in ddim
                   if r['model'] == 'student' or
                   r['num_steps'] == teacher_steps},
                  key=lambda c: (c[0] != 'teacher', -c[1]))
  for model_name, n in curves:
    points = {}
    for r in ddim:
      if (r['model'], r['num_steps']) == (model_name, n):
        points.setdefault(r['guidance'], []).append((r[other], r[metric_name]))
    ws = sorted(points)
    xs = [_mean_std([p[0] for p in points[w]]) for w in ws]
    ys = [_mean_std([p[1] for p in points[w]]) for w in ws]
    teacher = model_name == 'teacher'
    ax.errorbar([x for x, _ in xs], [y for y, _ in ys],
                xerr=[e for _, e in xs], yerr=[e for _, e in ys],
                marker='s' if teacher else 'o', markersize=4, capsize=2,
                linewidth=2 if teacher else 1, color='black' if teacher
                else None, label=_steps_label(model_name, n))
    if teacher:
      for w, (x, _), (y, _) in zip(ws, xs, ys):
        ax.annotate(f'w = {w:g}', (x, y), xytext=(-8, 6),
                    textcoords='offset points', ha='right', fontsize=8)
  ax.set_xlabel(_axis_label(other))
  ax.set_ylabel(_axis_label(metric_name))
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8, loc='upper left')
  return _png(fig, plt)


def plot_quality_vs_steps(rows, metric_name):
  """PNG bytes: metric against sampling steps (log scale), a line per model/sampler."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  lines = sorted({(r['model'], r['sampler']) for r in rows})
  for model_name, method in lines:
    by_steps = {}
    for r in rows:
      if (r['model'], r['sampler']) == (model_name, method):
        by_steps.setdefault(r['num_steps'], []).append(r[metric_name])
    steps = sorted(by_steps)
    means = [float(np.mean(by_steps[s])) for s in steps]
    label = ('distilled' if model_name == 'student' else 'undistilled') + (
        f' {method}')
    ax.plot(steps, means, marker='o', label=label)
  ax.set_xscale('log', base=2)
  ax.set_yscale('log')
  ax.set_xlabel('sampling steps')
  ax.set_ylabel(_axis_label(metric_name))
  ax.grid(True, which='both', alpha=0.3)
  ax.legend()
  return _png(fig, plt)


def run(config, workdir, teacher):
  evaluate(config, workdir, teacher)


def _forward_flops(config, model, params, batch):
  """XLA's FLOP count of one network evaluation of one image (eval mode)."""
  b = batch(config, 1)
  lowered = jax.jit(lambda p, x, y: model.apply(
      {'params': p}, x, jnp.zeros((1,)), y, train=False)).lower(
          params, b['image'], b['label'])
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get('flops') or 0.)


def flops_line(config, plan, batch):
  """Network evaluations of one image in all of evaluation's rows: the
  teacher's sweep and each of `plan.student_steps` (preflight's plan)."""
  e = config.eval
  ws = ([float(w) for w in e.guidance]
        if dataset_info.has_null_class(config) else [0.])
  # A guided teacher evaluates twice per step at w != 0; a student once.
  teacher = sum(2 if w else 1 for w in ws) * len(e.teacher_samplers) * sum(
      e.sample_steps)
  students = len(ws) * len(e.student_samplers) * sum(plan.student_steps)
  evals = teacher + students
  model = models.create_model(config)
  return (NAME, evals * e.num_samples * e.num_seeds, 1,
          _forward_flops(config, model,
                         models.abstract_params(model, config), batch),
          [f'{evals} network evaluations per sample, {e.num_samples:,} '
           f'samples x {e.num_seeds} seed(s)'], 'network evaluation')
