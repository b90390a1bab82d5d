"""The evaluation stage: sample quality against the number of sampling steps.

For the teacher it sweeps `eval.sample_steps` with DDIM and with the
ancestral sampler; for every finished student it uses DDIM and the
stochastic sampler at the student's own step count. Each row is one
(model, sampler, num_steps, seed) with the metric of `eval.num_samples`
samples, streamed in batches so memory does not grow with their number.

Writes WORKDIR/eval/results.{csv,json} and WORKDIR/eval/quality_vs_steps.png
(and the same to TensorBoard). Rows already in results.json are kept, so a
re-run after an interruption only computes what is missing.
"""

import csv
import io
import json
import os

from absl import logging
from clu import metric_writers
import flax.jax_utils
import jax
from jax.experimental import multihost_utils
import numpy as np
import tensorflow as tf

from diffusion_distill import checkpoints
from diffusion_distill import distill
from diffusion_distill import inference
from diffusion_distill import input_pipeline
from diffusion_distill import preemption
from diffusion_distill.evaluation import frechet
from diffusion_distill.evaluation import metrics as metrics_lib

COLUMNS = ('model', 'sampler', 'num_steps', 'seed')
TEACHER_FILE = 'teacher checkpoint file'


class DigitsMetric:
  """FD-digits, confidence and coverage from the fixed digits classifier."""
  name = 'fd_digits'

  def __init__(self):
    from diffusion_distill.evaluation import digits_classifier  # pylint: disable=g-import-not-at-top
    self._classifier = digits_classifier
    self._params = digits_classifier.load_digits_classifier()
    self.num_classes = 10

  def features_and_logits(self, images):
    return self._classifier.digits_features_and_logits(self._params, images)

  def summarize(self, stats, class_stats, reference):
    confidence, coverage = class_stats.confidence_and_coverage()
    return {'fd_digits': stats.frechet_distance(reference),
            'confidence': confidence, 'coverage': coverage}


class InceptionMetric:
  """FID and Inception Score from the FID Inception-v3 network."""
  name = 'fid'

  def __init__(self, weights_path):
    from diffusion_distill.evaluation import inception  # pylint: disable=g-import-not-at-top
    params = inception.load_inception_params(weights_path or None)
    self._devices = jax.local_devices()
    self._params = flax.jax_utils.replicate(params, self._devices)
    self._apply = jax.pmap(inception.apply_inception)
    self.num_classes = 1008

  def features_and_logits(self, images):
    """The network pmapped over the local devices (the batch is padded)."""
    n, d = images.shape[0], len(self._devices)
    pad = -n % d
    images = np.concatenate([images, np.repeat(images[:1], pad, 0)])
    features, logits = self._apply(
        self._params, images.reshape((d, -1) + images.shape[1:]))
    features = np.asarray(features).reshape((n + pad, -1))[:n]
    logits = np.asarray(logits).reshape((n + pad, -1))[:n]
    return features, logits

  def summarize(self, stats, class_stats, reference):
    return {'fid': stats.frechet_distance(reference),
            'inception_score': class_stats.inception_score()}


def make_metric(config):
  """The data set's metric; raises FileNotFoundError (one line) without weights."""
  if config.dataset.name == 'digits':
    return DigitsMetric()
  return InceptionMetric(config.eval.inception_weights)


def _allreduce_stats(stats, class_stats):
  """Merges every process's sums, so each process sees all samples' stats."""
  if jax.process_count() == 1:
    return stats, class_stats
  gathered = multihost_utils.process_allgather(
      {'count': np.int64(stats.count), 'shift': stats.shift, 'sum': stats.sum,
       'sum_outer': stats.sum_outer, 'c_count': np.int64(class_stats.count),
       'sum_probs': class_stats.sum_probs,
       'neg_ent': np.float64(class_stats.sum_neg_entropy),
       'max_prob': np.float64(class_stats.sum_max_prob),
       'confident': class_stats.confident_counts})
  merged = frechet.RunningStats(stats.dim)
  merged_class = metrics_lib.ClassStats(class_stats.num_classes)
  for p in range(jax.process_count()):
    part = frechet.RunningStats(stats.dim)
    part.count, part.shift = int(gathered['count'][p]), gathered['shift'][p]
    part.sum, part.sum_outer = gathered['sum'][p], gathered['sum_outer'][p]
    merged.merge(part)
    merged_class.count += int(gathered['c_count'][p])
    merged_class.sum_probs += gathered['sum_probs'][p]
    merged_class.sum_neg_entropy += float(gathered['neg_ent'][p])
    merged_class.sum_max_prob += float(gathered['max_prob'][p])
    merged_class.confident_counts += gathered['confident'][p]
  return merged, merged_class


def _stream(metric, batches, feature_dim=None):
  stats, class_stats = None, metrics_lib.ClassStats(metric.num_classes)
  for images in batches:
    features, logits = metric.features_and_logits(images)
    if stats is None:
      stats = frechet.RunningStats(feature_dim or features.shape[1])
    stats.update(features)
    class_stats.update(logits)
  return _allreduce_stats(stats, class_stats)


def reference_stats(config, metric, eval_dir):
  """Feature statistics of the training data, cached in the workdir."""
  path = os.path.join(eval_dir, f'reference_{config.dataset.name}_'
                      f'{metric.name}.npz')
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path, 'rb') as f:
      return frechet.RunningStats.from_npz(io.BytesIO(f.read()))
  batch = config.eval.batch_size

  def real_batches():
    # The unflipped training images, in [-1, 1] -> uint8 exactly as samples.
    it = input_pipeline.create_train_iterator(
        config, batch_size=batch * jax.process_count(), start_step=0,
        seed=config.seed)
    seen = 0
    while seen < config.eval.num_reference:
      images = next(it)['image']
      images = images.reshape((-1,) + images.shape[2:])
      yield np.clip(np.round((images + 1.) * 127.5), 0, 255).astype(np.uint8)
      seen += images.shape[0] * jax.process_count()

  if config.dataset.name == 'digits':
    # All 1,797 digits exactly once (the iterator would repeat some).
    images = input_pipeline.load_all_images(config)
    stats, _ = _stream(metric, [images])
  else:
    stats, _ = _stream(metric, real_batches())
  if jax.process_index() == 0:
    buf = io.BytesIO()
    stats.to_npz(buf)
    checkpoints.write_atomically(path, buf.getvalue())
  return stats


def _plan(config, workdir):
  """[(model, sampler, num_steps, source)] for this workdir.

  A source is a checkpoint directory of ours, or TEACHER_FILE for a teacher
  given as a checkpoint file released with the paper.
  """
  e = config.eval
  plan = []
  teacher = config.distill.teacher_checkpoint
  if teacher and tf.io.gfile.exists(teacher) and not tf.io.gfile.isdir(teacher):
    teacher_source = TEACHER_FILE
  else:
    teacher_source = checkpoints.stage_checkpoint_dir(teacher or workdir)
  if teacher_source is not None:
    for method in e.teacher_samplers:
      for n in e.sample_steps:
        plan.append(('teacher', method, int(n), teacher_source))
  for n, d in distill.finished_students(workdir):
    for method in e.student_samplers:
      plan.append(('student', method, int(n), d))
  return plan


def _load_sampler(config, workdir, source):
  if source == TEACHER_FILE:
    params, num_steps = distill.load_teacher(config, workdir)
    from diffusion_distill import models  # pylint: disable=g-import-not-at-top
    return inference.make_sampler(config, models.create_model(config), params,
                                  num_steps=num_steps)
  m_config, model, params, meta = inference.load_model(source)
  return inference.make_sampler(m_config, model, params,
                                num_steps=meta.get('num_sample_steps'))


def evaluate(config, workdir):
  """Runs the sweep; returns the rows (dicts) of the results table."""
  e = config.eval
  eval_dir = os.path.join(workdir, 'eval')
  metric = make_metric(config)
  if jax.process_index() == 0:
    tf.io.gfile.makedirs(eval_dir)
  reference = reference_stats(config, metric, eval_dir)
  results_path = os.path.join(eval_dir, 'results.json')
  rows = []
  if tf.io.gfile.exists(results_path):
    with tf.io.gfile.GFile(results_path) as f:
      rows = json.load(f)
  done = {tuple(r[c] for c in COLUMNS) for r in rows}
  loaded = {}
  for model_name, method, n, source in _plan(config, workdir):
    for seed in range(e.num_seeds):
      key = (model_name, method, n, config.seed + seed)
      if key in done:
        continue
      if preemption.requested():  # Rows already measured are in results.json.
        raise preemption.Preempted(
            f'evaluation stopped on SIGTERM after {len(rows)} rows, saved in '
            f'{results_path}; run the same command to resume')
      if source not in loaded:  # one model in memory at a time
        loaded = {source: _load_sampler(config, workdir, source)}
      sampler = loaded[source]
      rng = jax.random.fold_in(jax.random.PRNGKey(config.seed + seed),
                               jax.process_index())
      per_process = -(-e.num_samples // jax.process_count())
      stats, class_stats = _stream(metric, sampler.sample_batches(
          rng, per_process, e.batch_size, num_steps=n, method=method,
          noise_interp=e.ancestral_noise_interp))
      row = {'model': model_name, 'sampler': method, 'num_steps': n,
             'seed': config.seed + seed, 'num_samples': stats.count,
             **metric.summarize(stats, class_stats, reference)}
      logging.info('eval %s', row)
      rows.append(row)
      if jax.process_index() == 0:
        checkpoints.write_atomically(results_path, json.dumps(rows, indent=1).encode())
  if jax.process_index() == 0:
    write_outputs(rows, metric.name, eval_dir)
    writer = metric_writers.create_default_writer(eval_dir)
    for r in rows:
      writer.write_scalars(r['num_steps'], {
          f'{metric.name}/{r["model"]}_{r["sampler"]}': r[metric.name]})
    plot = os.path.join(eval_dir, 'quality_vs_steps.png')
    if tf.io.gfile.exists(plot):
      with tf.io.gfile.GFile(plot, 'rb') as f:
        image = tf.io.decode_png(f.read()).numpy()
      writer.write_images(0, {'quality_vs_steps': image[None]})
    writer.flush()
  return rows


def write_outputs(rows, metric_name, eval_dir):
  """results.csv (one row per evaluation) and quality_vs_steps.png."""
  columns = list(COLUMNS) + sorted(
      {k for r in rows for k in r} - set(COLUMNS))
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=columns)
  w.writeheader()
  for r in rows:
    w.writerow(r)
  checkpoints.write_atomically(os.path.join(eval_dir, 'results.csv'), buf.getvalue().encode())
  if rows:
    png = plot_quality_vs_steps(rows, metric_name)
    checkpoints.write_atomically(os.path.join(eval_dir, 'quality_vs_steps.png'), png)


def plot_quality_vs_steps(rows, metric_name):
  """PNG bytes: metric against sampling steps (log scale), a line per model/sampler."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
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
  ax.set_ylabel(metric_name.replace('_', '-').upper()
                if metric_name == 'fid' else 'FD-digits')
  ax.grid(True, which='both', alpha=0.3)
  ax.legend()
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format='png')
  plt.close(fig)
  return buf.getvalue()
