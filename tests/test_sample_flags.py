"""sample.py's flags: every bad value is one line, nothing is written; any
number of images is drawn in batches.

sample.py runs in this process (its main, after absl's flag parsing through
cli.parse_flags, as `app.run` does) on a tiny class-conditional teacher.
"""

import contextlib
import io
import logging
import os

from absl import flags
import jax
import numpy as np
import optax
import pytest
from PIL import Image

import sample
from diffusion_distill import checkpoints
from diffusion_distill import cli
from diffusion_distill import layout
from diffusion_distill import models
from diffusion_distill.train_state import TrainState
from tests import tiny


@pytest.fixture(scope='module')
def workdir(digits_dir, tmp_path_factory):
  """A workdir whose teacher (10 classes, no null class) has random weights."""
  config = tiny.tiny_config(digits_dir, **{'dataset.class_conditional': True})
  path = str(tmp_path_factory.mktemp('sample') / 'wd')
  ckpt = checkpoints.Checkpointer(
      layout.checkpoint_dir(layout.teacher_dir(path)))
  model = models.create_model(config)
  params = models.init_params(model, config, jax.random.PRNGKey(0))
  params = jax.tree.map(lambda a: a + 0.05, params)  # Not the zero output.
  ckpt.save(2, TrainState.create(params, optax.sgd(1.), jax.random.PRNGKey(0)),
            layout.model_meta(config, stage='teacher', num_sample_steps=None,
                              stage_num_steps=2))
  ckpt.close()
  return path


def run(*args):
  """(exit code, stderr) of `python sample.py ARGS`, in this process."""
  flags.FLAGS.unparse_flags()
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    try:
      sample.main(cli.parse_flags(['sample.py', *args]))
    except SystemExit as e:
      return e.code, err.getvalue()
  return 0, err.getvalue()


def _listing(path):
  return sorted(os.path.join(d, f) for d, _, files in os.walk(path)
                for f in files)


A_FILE = os.path.abspath(__file__)
BAD = [
    ('--guidance', 'nan'), ('--guidance', 'inf'), ('--guidance', '-1'),
    ('--guidance', 'abc'), ('--guidance', '2'),  # An unguided model.
    ('--labels', 'abc'), ('--labels', '-1'), ('--labels', '10'),
    ('--labels', '1,2'), ('--labels', ''),
    ('--num_steps', '0'), ('--num_steps', '-1'), ('--num_steps', 'abc'),
    ('--num_steps', '1000000000000000'),
    ('--num_samples', '0'), ('--num_samples', '-3'), ('--num_samples', 'x'),
    ('--num_samples', '1000000000000000'),
    ('--batch_size', '0'), ('--batch_size', '1000000000000000'),
    ('--method', 'bogus'), ('--method', ''),
    ('--noise_interp', 'nan'), ('--noise_interp', '-1'),
    ('--noise_interp', '2'), ('--noise_interp', 'inf'),
    ('--seed', '-1'), ('--seed', 'abc'), ('--seed', '1000000000000000'),
    ('--output_dir', ''), ('--output_dir', os.path.join(A_FILE, 'out')),
    ('--output_dir', '/proc/diffusion_distill_out'),
]


@pytest.mark.parametrize('flag,value', BAD, ids=[f'{f}={v}' for f, v in BAD])
def test_bad_flag_is_one_line_and_writes_nothing(workdir, tmp_path, flag,
                                                 value):
  before = _listing(workdir)
  out = tmp_path / 'out'
  args = [f'--workdir={workdir}', '--num_samples=3', '--num_steps=2',
          f'{flag}={value}']
  if flag != '--output_dir':
    args.append(f'--output_dir={out}')
  code, err = run(*args)
  lines = err.strip().splitlines()
  assert code == 2 and len(lines) == 1, (code, err)
  assert lines[0].startswith(f'error: {flag}'), lines[0]
  assert 'Traceback' not in err
  assert not out.exists() and _listing(workdir) == before


def test_images_come_in_batches_and_one_batch_is_as_before(workdir, tmp_path,
                                                          caplog):
  one, three = tmp_path / 'one', tmp_path / 'three'
  assert run(f'--workdir={workdir}', '--num_samples=5', '--num_steps=2',
             '--labels=3', f'--output_dir={one}')[0] == 0
  sampler = layout.load_sampler(workdir)
  want = sampler.sample(jax.random.PRNGKey(0), 5, num_steps=2,
                        labels=np.full(5, 3))
  for i in range(5):
    np.testing.assert_array_equal(
        np.asarray(Image.open(one / f'{i:06d}.png')).reshape(want[i].shape),
        want[i])
  with caplog.at_level(logging.INFO, logger='diffusion_distill.sample'):
    assert run(f'--workdir={workdir}', '--num_samples=5', '--num_steps=2',
               '--batch_size=2', f'--output_dir={three}')[0] == 0
  assert sorted(os.listdir(three)) == [f'{i:06d}.png' for i in range(5)] + [
      'grid.png']
  # Batch b draws with fold_in(key, b), its noise and labels alike.
  for b, start in ((0, 0), (2, 4)):
    drawn = sampler.sample(jax.random.fold_in(jax.random.PRNGKey(0), b),
                           min(2, 5 - start), num_steps=2)
    for i, image in enumerate(drawn):
      np.testing.assert_array_equal(np.asarray(Image.open(
          three / f'{start + i:06d}.png')).reshape(image.shape), image)
  progress = [r.getMessage() for r in caplog.records
              if 'images (' in r.getMessage()]
  assert progress[0].startswith('2/5 images (40%)'), progress
  assert progress[1].startswith('4/5 images (80%)'), progress
