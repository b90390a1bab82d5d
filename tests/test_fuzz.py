"""Every config field, given each kind of bad value, is one line or accepted.

The fields and their types come from configs/base.py itself, so a new
field is fuzzed without anyone listing it. Each (field, bad value) goes
through what `main.py --config=configs/digits.py --config.FIELD=VALUE
--workdir=DIR --check_local` runs: absl's flag parsing with the config flag
(cli.parse_flags), the known-field check and preflight.check without the
target machine's checks. The outcome must be exit 2 with one `error:` line
that names the field, and no traceback, and nothing written; or the value
is one the field takes (ACCEPTED, with the reason).
"""

import contextlib
import io
import os

from absl import flags
from ml_collections import config_flags
import pytest

from configs import base
from diffusion_distill import cli
from diffusion_distill import config_checks
from diffusion_distill import preflight

CONFIG = 'configs/digits.py'
LARGE = '1000000000000000'  # 1e15.

# The bad values tried on a field of each type, as the command line spells
# them: {kind: text}.
BAD = {
    int: {'wrong type': 'abc', 'NaN': 'nan', '+inf': 'inf', '-inf': '-inf',
          'negative': '-1', 'zero': '0', 'absurdly large': LARGE},
    float: {'wrong type': 'abc', 'NaN': 'nan', '+inf': 'inf', '-inf': '-inf',
            'negative': '-1', 'zero': '0', 'absurdly large': LARGE},
    bool: {'wrong type': 'abc', 'a number': '5'},
    str: {'empty': '', 'not an allowed name': 'bogus'},
    # No field is a tuple of a fixed length, so no length is wrong; an empty
    # one is.
    tuple: {'empty': '()', 'wrong type': "('abc',)", 'NaN': '(nan,)',
            'negative': '(-1,)', 'zero': '(0,)',
            'absurdly large': f'({LARGE},)'},
}

_ZERO_OFF = 'documented: 0 turns it off'
# (field, kind) -> why the field takes that value.
ACCEPTED = {
    ('seed', 'zero'): 'a seed like any other',
    ('dataset.data_dir', 'not an allowed name'): 'a path: whether it holds '
                                                 'the data is checked on '
                                                 'the machine that runs',
    ('eval.inception_weights', 'empty'): 'documented: the default path',
    ('eval.inception_weights', 'not an allowed name'): 'a path, checked on '
                                                       'the machine that runs',
    ('model.attn_resolutions', 'empty'): 'no attention outside the middle',
    ('model.dropout', 'zero'): 'no dropout',
    ('schedule.logsnr_min', 'negative'): 'the paper uses -20',
    ('schedule.logsnr_min', 'zero'): 'a range above 0 is a valid schedule',
    ('schedule.logsnr_max', 'negative'): 'a range below 0 is a valid schedule',
    ('schedule.logsnr_max', 'zero'): 'a range below 0 is a valid schedule',
    ('train.warmup_steps', 'zero'): _ZERO_OFF,
    ('train.decay_steps', 'zero'): _ZERO_OFF,
    ('train.weight_decay', 'zero'): _ZERO_OFF,
    ('train.ema_decay', 'zero'): _ZERO_OFF,
    ('train.grad_clip', 'zero'): _ZERO_OFF,
    ('train.grad_clip', 'absurdly large'): 'a threshold that never clips',
    ('train.max_nonfinite_in_a_row', 'zero'): _ZERO_OFF,
    ('train.sample_every_steps', 'zero'): _ZERO_OFF,
    ('distill.grad_clip', 'zero'): _ZERO_OFF,
    ('distill.grad_clip', 'absurdly large'): 'a threshold that never clips',
    ('guidance.label_dropout', 'zero'): _ZERO_OFF,
    ('guidance.w_min', 'zero'): 'w = 0 is the unguided model',
    ('guidance.w_max', 'zero'): 'w = 0 is the unguided model',
    ('guidance.w_max', 'absurdly large'): 'a weight of the guided '
                                          'prediction, valid if unwise',
    ('guidance.ema_decay', 'zero'): _ZERO_OFF,
    ('guidance.w_warmup_steps', 'zero'): _ZERO_OFF,
    ('consistency.target_decay', 'zero'): 'documented: 0 is a stop-gradient '
                                          'copy of the student',
    ('eval.ancestral_noise_interp', 'zero'): 'the lower variance bound',
    ('eval.guidance', 'zero'): 'w = 0, unguided',
}


def _fields(tree, prefix=''):
  out = []
  for key in tree.keys():
    value = tree[key]
    if hasattr(value, 'keys'):
      out += _fields(value, f'{prefix}{key}.')
    else:
      out.append((prefix + key, tree.get_type(key)))
  return out


CASES = [(field, kind, text) for field, kind_of in _fields(base.get_config())
         for kind, text in BAD.get(kind_of, {}).items()]


def check_local(argv, workdir):
  """(exit code, stderr) of main.py's --check_local path on `argv`."""
  full = ['main.py', *argv, f'--workdir={workdir}']
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'Config file.',
                                  flag_values=values, lock_config=True,
                                  sys_argv=full)
  flags.DEFINE_string('workdir', None, 'Workdir.', flag_values=values)
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    try:
      cli.parse_flags(full, values)
      config = values.config
      cli.check_known_fields(config, base.get_config(), full)
      try:
        preflight.check(config, workdir, target=False)
      except config_checks.ConfigError as e:
        cli.exit_with(e, 2)
    except SystemExit as e:
      return e.code, err.getvalue()
  return 0, err.getvalue()


def test_every_field_type_is_fuzzed():
  types = {kind for _, kind in _fields(base.get_config())}
  assert types <= set(BAD), f'no bad values for {types - set(BAD)}'
  unknown = {f for f, _ in ACCEPTED} - {f for f, _, _ in CASES}
  assert not unknown, unknown


def _one_line_or_accepted(base, field, kind, text, accepted, workdir):
  """`base` args and --config.FIELD=TEXT: one line naming the field and
  nothing written, or exit 0 where `accepted` lists (field, kind)."""
  code, err = check_local([f'--config={CONFIG}', *base,
                           f'--config.{field}={text}'], workdir)
  assert not os.path.exists(workdir), 'a check wrote the workdir'
  if (field, kind) in accepted:
    assert code == 0, (field, kind, err)
    return
  lines = err.strip().splitlines()
  assert code == 2 and len(lines) == 1, (code, err)
  assert lines[0].startswith('error: ') and field in lines[0], lines[0]
  assert 'Traceback' not in err


@pytest.mark.parametrize('field,kind,text', CASES,
                         ids=[f'{f}-{k}' for f, k, _ in CASES])
def test_bad_value_is_one_line_naming_the_field(field, kind, text, tmp_path):
  _one_line_or_accepted([], field, kind, text, ACCEPTED,
                        str(tmp_path / 'wd'))


# An image folder's fields, fuzzed on a config that reads one (on digits
# any value of theirs is refused: they describe a folder).
FOLDER = ['--config.dataset.name=image_folder', '--config.dataset.path=/data',
          '--config.dataset.image_size=8']
FOLDER_CASES = [(field, kind, text) for field, kind, text in CASES
                if field.removeprefix('dataset.') in ('path', 'image_size',
                                                      'channels',
                                                      'num_classes')]
FOLDER_ACCEPTED = {
    ('dataset.path', 'not an allowed name'): 'a path, read on the machine '
                                             'that runs',
}


@pytest.mark.parametrize('field,kind,text', FOLDER_CASES,
                         ids=[f'{f}-{k}' for f, k, _ in FOLDER_CASES])
def test_bad_folder_value_is_one_line_naming_the_field(field, kind, text,
                                                       tmp_path):
  _one_line_or_accepted(FOLDER, field, kind, text, FOLDER_ACCEPTED,
                        str(tmp_path / 'wd'))


def test_the_folder_config_itself_passes(tmp_path):
  assert len(FOLDER_CASES) == 23
  assert check_local([f'--config={CONFIG}', *FOLDER],
                     str(tmp_path / 'wd')) == (0, '')


def test_the_config_itself_passes(tmp_path):
  assert check_local([f'--config={CONFIG}'], str(tmp_path / 'wd')) == (0, '')


BROKEN_CONFIGS = {
    'does not parse': ('def get_config(:\n  pass\n', 1, 'SyntaxError'),
    'cannot be imported': ('import no_such_module_here\n', 1,
                           "ModuleNotFoundError: No module named "
                           "'no_such_module_here'"),
    'raises in get_config': (
        'from configs import digits\n\n\ndef get_config():\n'
        '  raise ValueError("the data set is gone")\n', 5,
        'ValueError: the data set is gone'),
    'sets a value of the wrong type': (
        'from configs import digits\n\n\ndef get_config():\n'
        '  config = digits.get_config()\n'
        '  config.train.batch_size = "big"\n  return config\n', 6,
        "TypeError: Could not override field 'batch_size'"),
    'misspells a section': (
        'from configs import digits\n\n\ndef get_config():\n'
        '  config = digits.get_config()\n'
        '  config.trian.batch_size = 32\n  return config\n', 6,
        'AttributeError: \'trian\' Did you mean "train" instead of "trian"?'),
    'misspells a field while setting it': (
        'from configs import digits\n\n\ndef get_config():\n'
        '  config = digits.get_config()\n'
        '  config.train.batchsize = 32\n  return config\n', 6,
        'config.train.batchsize is not a config field: did you mean '
        'config.train.batch_size?'),
    'forgets to return': (
        'from configs import digits\n\n\ndef get_config():\n'
        '  config = digits.get_config()\n', None,
        'get_config() returned None, not an ml_collections.ConfigDict: end '
        'it with `return config`'),
    'returns a dict': ('def get_config():\n  return {"seed": 1}\n', None,
                       'get_config() returned dict, not an '
                       'ml_collections.ConfigDict'),
}


@pytest.mark.parametrize('what', sorted(BROKEN_CONFIGS))
def test_config_file_that_fails_is_one_line_with_file_and_line(what, tmp_path):
  text, line, says = BROKEN_CONFIGS[what]
  path = tmp_path / 'broken.py'
  path.write_text(text)
  workdir = str(tmp_path / 'wd')
  # An override of a field the file does not break: the file is blamed.
  code, err = check_local([f'--config={path}',
                           '--config.train.batch_size=8'], workdir)
  lines = err.strip().splitlines()
  assert code == 2 and len(lines) == 1, (code, err)
  where = f'error: --config={path}' + (f', line {line}: ' if line else ': ')
  assert lines[0].startswith(where), lines[0]
  assert says in lines[0], lines[0]
  assert 'Traceback' not in err and not os.path.exists(workdir)
