"""The shipped configs: valid, the paper's networks, and cifar10_distill.py
driven through main.py on mock CIFAR-10 with a reduced model."""

import importlib
import os
import runpy
import sys

from absl import flags
import flax.serialization
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from diffusion_distill import config_checks, dataset_info
from diffusion_distill.stages import distill
from diffusion_distill import input_pipeline, layout, models

CONFIGS = ('digits', 'digits_teacher', 'digits_distill', 'cifar10_teacher',
           'cifar10_distill', 'imagenet64_teacher', 'imagenet64_distill',
           'lsun_church128_teacher', 'lsun_church128_distill',
           'lsun_bedroom128_teacher', 'lsun_bedroom128_distill',
           'digits_guided', 'imagenet64_guided_teacher',
           'imagenet64_guided_distill', 'digits_consistency',
           'cifar10_consistency', 'imagenet64_consistency')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PAPER_PARAMS = {'cifar10': 60_004_099, 'imagenet64': 295_905_222,
                'lsun_church128': 139_578_502, 'lsun_bedroom128': 139_578_502}


def _load(name):
  return importlib.import_module(f'configs.{name}').get_config()


@pytest.mark.parametrize('name', CONFIGS)
def test_config_is_valid_and_documented(name):
  config = _load(name)
  config_checks.check_config(config, schema=_load('base'))
  config_checks.check_batch_divides(config, 8, 8)
  doc = importlib.import_module(f'configs.{name}').__doc__
  assert f'--config=configs/{name}.py' in doc


@pytest.mark.parametrize('name', [n for n in CONFIGS if 'digits' not in n])
def test_paper_configs_build_the_paper_networks(name):
  config = _load(name)
  shapes = models.abstract_params(models.create_model(config), config)
  count = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
  # A guidable teacher embeds one more class, the null class.
  null_class = config.model.emb_ch * dataset_info.has_null_class(config)
  # 'both' outputs 2C channels, the others C (the guided-distillation
  # authors' ImageNet 64 teacher predicts v): conv_out's kernel and bias.
  outputs = lambda mean_type: 2 if mean_type == 'both' else 1
  channels = dataset_info.get(config.dataset.name).channels
  other_output = (outputs(config.model.mean_type) - outputs(
      PAPER_TABLE[config.dataset.name]['model']['mean_type'])) * channels * (
          9 * config.model.ch * config.model.ch_mult[0] + 1)
  assert count == PAPER_PARAMS[config.dataset.name] + null_class + (
      other_output)


def test_round_plans_of_paper_configs():
  plan = distill.round_plan(8192, 1, 50_000, 2)
  assert [n for n, _ in plan][-4:] == [8, 4, 2, 1]
  assert [u for _, u in plan][-3:] == [50_000, 100_000, 100_000]
  config = _load('imagenet64_distill')
  assert config.model.mean_type == 'both' and config.dataset.class_conditional


@pytest.fixture
def script_flags():
  """absl's global flags as a shell gives them to main.py: those that other
  test modules' scripts defined on import (sample.py's --workdir) are set
  aside and, with main.py's, put back as they were after the test."""
  registry = flags.FLAGS
  aside = {name: registry[name] for name in list(registry)
           if not registry.find_module_defining_flag(name, '').startswith(
               'absl.')}
  for name in aside:
    delattr(registry, name)
  yield
  for name in [n for n in list(registry) if n not in aside and
               not registry.find_module_defining_flag(n, '').startswith(
                   'absl.')]:
    delattr(registry, name)
  for name, flag in aside.items():
    if name not in registry:
      registry[name] = flag


@pytest.mark.slow
@pytest.mark.usefixtures('script_flags')
def test_cifar10_distill_through_main_on_mock_data(tmp_path, monkeypatch):
  """main.py with configs/cifar10_distill.py and a paper-format teacher file,
  on mock CIFAR-10 and a reduced U-Net."""
  overrides = ['--config.model.ch=32', '--config.model.emb_ch=32',
               '--config.model.ch_mult=(1,)', '--config.model.num_res_blocks=1',
               '--config.model.attn_resolutions=(32,)',
               '--config.distill.start_num_steps=4',
               '--config.distill.steps_per_round=2',
               '--config.distill.batch_size=8',
               '--config.train.log_every_steps=1',
               '--config.train.num_grid_samples=2']
  config = _load('cifar10_distill')
  config.model.ch, config.model.emb_ch = 32, 32
  config.model.ch_mult, config.model.num_res_blocks = (1,), 1
  config.model.attn_resolutions = (32,)
  model = models.create_model(config)
  params = models.init_params(model, config, jax.random.PRNGKey(0))
  teacher = str(tmp_path / 'cifar_original')
  with open(teacher, 'wb') as f:
    f.write(flax.serialization.msgpack_serialize(
        {'step': 1, 'optimizer': {'target': params, 'state': {}},
         'ema_params': params}))
  workdir = str(tmp_path / 'wd')
  # mock_data serves examples but not TFDS's "is prepared" metadata.
  monkeypatch.setattr(input_pipeline, 'check_data_available', lambda c: None)
  argv = ['main.py', '--config=configs/cifar10_distill.py',
          f'--workdir={workdir}',
          f'--config.distill.teacher_checkpoint={teacher}', '--allow_cpu',
          *overrides]
  # config_flags reads --config.* overrides from sys.argv when main.py
  # defines its flags, so main.py runs as a script here, as from a shell.
  monkeypatch.setattr(sys, 'argv', argv)
  with tfds.testing.mock_data(num_examples=64):
    with pytest.raises(SystemExit) as exit_info:
      runpy.run_path(os.path.join(REPO, 'main.py'), run_name='__main__')
  assert exit_info.value.code in (None, 0)
  for n in (2, 1):  # rounds ending at 2 and 1 steps are doubled: 2 x 2
    assert os.path.isdir(os.path.join(distill.student_dir(workdir, n),
                                      'checkpoints', '4'))
  sampler = layout.load_sampler(workdir)
  assert sampler.num_steps == 1
  assert sampler.sample(jax.random.PRNGKey(1), 2).shape == (2, 32, 32, 3)


# docs/method.md, section 6: the paper's table, field by field.
PAPER_TABLE = {
    'cifar10': dict(
        model=dict(ch=256, emb_ch=1024, ch_mult=(1, 1, 1), num_res_blocks=3,
                   attn_resolutions=(8, 16), num_heads=1, head_dim=None,
                   dropout=0.2, mean_type='x', loss_weighting='snr_trunc',
                   resblock_resample=True),
        train=dict(batch_size=128, learning_rate=2e-4, warmup_steps=1000,
                   decay_steps=0, weight_decay=1e-3, ema_decay=0.9999,
                   grad_clip=1.0),
        distill=dict(start_num_steps=8192, end_num_steps=1, batch_size=128,
                     learning_rate=5e-5, steps_per_round=50_000,
                     last_rounds_multiplier=2, long_rounds_max_steps=2,
                     grad_clip=1.0),
        dataset=dict(class_conditional=False)),
    'imagenet64': dict(
        model=dict(ch=192, emb_ch=768, ch_mult=(1, 2, 3, 4), num_res_blocks=3,
                   attn_resolutions=(8, 16, 32), head_dim=64, dropout=0.1,
                   mean_type='both', loss_weighting='snr_trunc',
                   resblock_resample=True),
        train=dict(batch_size=2048, learning_rate=3e-4, warmup_steps=1000,
                   decay_steps=0, weight_decay=0.0, ema_decay=0.9999),
        distill=dict(start_num_steps=1024, end_num_steps=1, batch_size=2048,
                     learning_rate=1e-4, steps_per_round=50_000,
                     last_rounds_multiplier=2, long_rounds_max_steps=2),
        dataset=dict(class_conditional=True)),
    'lsun_church128': dict(
        model=dict(ch=64, emb_ch=768, ch_mult=(1, 2, 4, 6, 8),
                   num_res_blocks=3, attn_resolutions=(8, 16, 32),
                   head_dim=64, dropout=0.1, mean_type='both',
                   loss_weighting='snr_trunc', resblock_resample=True),
        train=dict(batch_size=2048, learning_rate=3e-4, warmup_steps=1000,
                   decay_steps=0, weight_decay=0.0, ema_decay=0.9999),
        distill=dict(start_num_steps=1024, end_num_steps=1, batch_size=2048,
                     learning_rate=1e-4, steps_per_round=50_000,
                     last_rounds_multiplier=2, long_rounds_max_steps=2),
        dataset=dict(class_conditional=False)),
}
PAPER_TABLE['lsun_bedroom128'] = PAPER_TABLE['lsun_church128']


# The guided-distillation authors' code (google-research ddpm_w_distillation:
# i64_retrain_unet3.py, i64_condw_stage1_distill.py and
# i64_condw_stage2_distill.py), field by field; the configs' docstrings give
# each value's source.
_GUIDED_TEACHER = dict(
    model=dict(ch=192, emb_ch=768, ch_mult=(1, 2, 3, 4), num_res_blocks=3,
               attn_resolutions=(8, 16, 32), head_dim=64, dropout=0.1,
               mean_type='v', loss_weighting='snr', resblock_resample=True),
    train=dict(batch_size=2048, learning_rate=3e-4, warmup_steps=10_000,
               decay_steps=0, weight_decay=0.0, ema_decay=0.9999,
               grad_clip=1.0, num_steps=220_000),
    guidance=dict(label_dropout=0.1),
    dataset=dict(name='imagenet64', class_conditional=True))
AUTHORS_GUIDED_TABLE = {
    'imagenet64_guided_teacher': _GUIDED_TEACHER,
    'imagenet64_guided_distill': dict(
        _GUIDED_TEACHER,
        guidance=dict(label_dropout=0.1, w_min=0.0, w_max=4.0,
                      batch_size=256, learning_rate=3e-4,
                      learning_rate_schedule='constant', ema_decay=0.9999,
                      w_warmup_steps=10_000),
        distill=dict(start_num_steps=1024, end_num_steps=1, batch_size=256,
                     learning_rate=1e-4, steps_per_round=50_000,
                     loss_weighting='snr_trunc')),
}


# Consistency distillation's values (Song et al., ICML 2023, Table 3), field
# by field; the configs' docstrings give each value's source. The CIFAR-10
# config needs a v teacher (the paper's predicts x).
CONSISTENCY_TABLE = {
    'cifar10_consistency': dict(
        model=dict(mean_type='v'),
        consistency=dict(phases=(1,), teacher_num_steps=18,
                         num_steps=800_000, learning_rate=4e-4,
                         batch_size=512, target_decay=0.0)),
    'imagenet64_consistency': dict(
        consistency=dict(phases=(1,), teacher_num_steps=40,
                         num_steps=600_000, learning_rate=8e-6,
                         batch_size=2048, target_decay=0.95)),
}


def _assert_fields(name, config, want):
  for section, fields in want.items():
    for field, value in fields.items():
      got = config[section][field]
      got = tuple(got) if isinstance(got, (list, tuple)) else got
      assert got == value, (name, f'{section}.{field}', got, value)


@pytest.mark.parametrize('name', [n for n in CONFIGS if 'digits' not in n])
def test_paper_configs_hold_the_papers_values(name):
  config = _load(name)
  want = AUTHORS_GUIDED_TABLE.get(name, PAPER_TABLE[config.dataset.name])
  for section, fields in CONSISTENCY_TABLE.get(name, {}).items():
    want = dict(want, **{section: dict(want.get(section, {}), **fields)})
  _assert_fields(name, config, want)
  assert (config.schedule.logsnr_min, config.schedule.logsnr_max) == (-20, 20)
  guided = dataset_info.has_null_class(config)
  if name.endswith('_consistency'):
    assert config.stages == ('consistency',)
    return
  assert config.stages == (
      (('guide', 'distill') if guided else ('distill',))
      if name.endswith('_distill') else ('teacher',))


def _assigned_fields(name):
  """The config.a.b fields a config file's get_config assigns."""
  import ast  # pylint: disable=g-import-not-at-top
  with open(os.path.join(REPO, 'configs', f'{name}.py')) as f:
    tree = ast.parse(f.read())
  return [ast.unparse(t) for node in ast.walk(tree)
          if isinstance(node, ast.Assign) for t in node.targets
          if ast.unparse(t).startswith('config.')]


@pytest.mark.parametrize('name', [n for n in CONFIGS])
def test_configs_set_only_what_differs_from_their_parent(name):
  """Each assignment in a config file changes its parent's value."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  module = importlib.import_module(f'configs.{name}')
  parents = [m for m in vars(module).values()
             if isinstance(m, type(module)) and hasattr(m, 'get_config')]
  assert len(parents) == 1, name
  parent, config = parents[0].get_config(), _load(name)
  restated = []
  for field in _assigned_fields(name):
    old, new = parent, config
    for part in field.split('.')[1:]:
      old, new = old[part], new[part]
    if old == new:
      restated.append(f'{field}={new!r}')
  assert not restated, f'configs/{name}.py restates {restated}'
