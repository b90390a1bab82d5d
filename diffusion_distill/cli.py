"""What main.py and sample.py share: quiet logs and one-line errors.

A mistake on the command line is one `error: ...` line on stderr and exit
code 2; a run-time failure (a missing checkpoint, a full disk) exit code 1.
With `-v 1` (absl's --verbosity) the traceback is shown instead.
"""

import ast
import logging
import os
import re
import sys
import traceback

from absl import flags
from absl import logging as absl_logging
import ml_collections
from ml_collections import config_flags

from diffusion_distill import field_checks

FLAGS = flags.FLAGS


def configure_logging():
  """This project's INFO lines; libraries' warnings and errors only.

  Libraries log through absl or Python logging at INFO in detail (Orbax
  several lines per checkpoint): absl's verbosity is WARNING unless
  --verbosity is given, and the project's own logger says INFO. TensorFlow
  only feeds tf.data here: its oneDNN kernels (for TF models, whose notice
  it prints on import) are off and its C++ INFO lines too, unless the
  environment sets TF_ENABLE_ONEDNN_OPTS or TF_CPP_MIN_LOG_LEVEL. Call it
  before TensorFlow is imported.
  """
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
  if not FLAGS['verbosity'].present:
    absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger('diffusion_distill').setLevel(logging.INFO)


def exit_with(message, code):
  """One line on stderr, and the exit code."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(code)


def fail(message, code):
  """`exit_with` while handling an exception; its traceback only with -v 1."""
  if absl_logging.get_verbosity() >= absl_logging.DEBUG:
    raise  # pylint: disable=misplaced-bare-raise
  exit_with(message, code)


def _one_line(text, limit=400):
  text = ' '.join(str(text).split())
  return text if len(text) <= limit else text[:limit - 3] + '...'


def _unknown_field(error, argv):
  """(--config.a.b, b) of the override that names no field, or None."""
  words = set(re.findall(r'\w+', str(error)))
  for arg in argv:
    m = re.match(r'--?(config(\.\w+)+)', arg)
    if m:
      for name in m.group(1).split('.')[1:]:
        if name in words:
          return m.group(1), name
  return None


def config_file(argv):
  """The file of the last --config= in `argv` (without a ':ARG'), or None."""
  files = [a.split('=', 1)[1] for a in argv if a.startswith('--config=')]
  return files[-1].split(':', 1)[0] if files else None


def line_in_config_file(error, path):
  """(line, exception) where running config file `path` raised, following
  `error`'s chain of causes (config_flags wraps what the file raised), or
  None when the file is not where it happened."""
  target = os.path.abspath(path)
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, SyntaxError) and error.filename and (
        os.path.abspath(error.filename) == target):
      return error.lineno, error
    lines = [frame.lineno for frame in traceback.extract_tb(
        error.__traceback__) if os.path.abspath(frame.filename) == target]
    if lines:
      return lines[-1], error
    error = error.__cause__ or error.__context__
  return None


def line_setting(path, field):
  """The first line of config file `path` that assigns the last name of
  `field` (a.b.c: `.c =`), or None."""
  name = re.escape(field.rsplit('.', 1)[-1])
  try:
    with open(path) as f:
      for number, text in enumerate(f, 1):
        if re.search(rf'\.{name}\s*=(?!=)', text):
          return number
  except OSError:
    pass
  return None


def _exception_text(error):
  text = error.msg if isinstance(error, SyntaxError) else str(error)
  if isinstance(error, (KeyError, AttributeError)) and len(text) > 1 and (
      text[0] == text[-1] and text[0] in '\'"'):
    try:  # ConfigDict's messages arrive as the repr of a string.
      text = str(ast.literal_eval(text))
    except (ValueError, SyntaxError):
      pass
  return _one_line(text)


def _not_a_config(config, path):
  kind = 'None' if config is None else type(config).__name__
  return (f'--config={path}: get_config() returned {kind}, '
          'not an ml_collections.ConfigDict' + (
              ': end it with `return config`' if config is None else ''))


def _file_alone(argv):
  """The line for what the config file of `argv` does wrong on its own
  (overrides left out), or None: a broken file is blamed before the
  overrides that could not be applied to it."""
  path = config_file(argv)
  if not path:
    return None
  alone = [argv[0], f'--config={path}']
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, '', flag_values=values,
                                  sys_argv=alone)
  try:
    values(alone)
    config = values.config
    if config is not None:
      config.keys()
  except Exception as e:  # pylint: disable=broad-except
    found = line_in_config_file(e, path)
    if found:
      line, raised = found
      return (f'--config={path}, line {line}: {type(raised).__name__}: '
              f'{_exception_text(raised)}; fix the config file')
    return _not_a_config(None, path) if 'must have a value' in str(e) else None
  return None if isinstance(config, ml_collections.ConfigDict) else (
      _not_a_config(config, path))


def config_flag_error(error, argv):
  """One line for a failure to read --config and its --config.* overrides."""
  text = str(error)
  found = _file_alone(argv)
  if found:
    return found
  if isinstance(error, flags.IllegalFlagValueError):
    m = re.match(r'flag (--[\w.]+)=None: Flag .* must have a value', text)
    if m:
      return f'{m.group(1)} is required'
    m = re.match(r'flag (--[\w.]+)=(.*?): (.*)', text, re.S)
    if not m:
      return _one_line(text)
    why = m.group(3)
    kind = ('give an integer' if 'int()' in why else
            'give a number' if 'float' in why else
            'give true or false' if 'oolean' in why else 'give another value')
    return f'{m.group(1)}={m.group(2)} is invalid: {kind} ({_one_line(why)})'
  unknown = _unknown_field(error, argv) if isinstance(
      error, (KeyError, AttributeError)) else None
  if unknown:
    path, name = unknown
    parts = path.split('.')
    prefix = '.'.join(parts[:parts.index(name)])
    # ml_collections names the closest field in its message.
    close = re.search(r'Did you mean \W*"(\w+)"', text)
    hint = (f': did you mean {prefix}.{close.group(1)}?' if close else
            f': {prefix} has no field {name!r}')
    return f'--{path} is not a config field{hint}'
  files = [a.split('=', 1)[1] for a in argv if a.startswith('--config=')]
  where = f'={files[-1]}' if files else ''
  if isinstance(error, OSError) and 'Failed loading config file' in text:
    return (f'--config{where} cannot be read: '
            f'{_one_line(text.splitlines()[-1].strip())}; give a config file '
            'such as configs/digits.py')
  return (f'--config{where} fails to load: {type(error).__name__}: '
          f'{_one_line(text)}; fix the config file')


def check_known_fields(config, schema, argv):
  """Exits 2 with one line for a field that `schema` (configs/base.py's
  config) lacks: a misspelling in a config file, with the line of the file
  that sets it when it is there."""
  try:
    field_checks.check_known_fields(config, schema)
  except field_checks.UnknownFieldError as e:
    path = config_file(argv)
    line = path and line_setting(path, e.field)
    exit_with(f'--config={path}, line {line}: {e}' if line else e, 2)


def parse_flags(argv, flag_values=FLAGS):
  """absl's flag parsing, with a config or flag mistake as one line (exit 2).

  Reads --config (which runs the config file) here, so that a broken config
  file is reported before anything else happens. `flag_values`: the
  FlagValues that hold the flags (absl's global ones for main.py and
  sample.py).
  """
  try:
    rest = flag_values(argv)
    if 'config' in flag_values and flag_values['config'].present:
      config = flag_values.config
      if config is not None:
        config.keys()  # Loads the file; a failure shows here.
      if not isinstance(config, ml_collections.ConfigDict):
        exit_with(_not_a_config(config, config_file(argv)), 2)
  except flags.Error as e:
    if 'config' in str(e) or isinstance(e, flags.IllegalFlagValueError):
      exit_with(config_flag_error(e, argv), 2)
    exit_with(_one_line(e), 2)
  except Exception as e:  # pylint: disable=broad-except
    # A config file that is missing or fails to import, or an override of
    # a field it does not have: config_flags raises what the file raised.
    exit_with(config_flag_error(e, argv), 2)
  return rest
