"""ConfigError, `require` and the value tests of every config check.

config_checks runs the checks of the config's sections; a stage of the
`stages` package declares its own section's checks with these. Light on
purpose (no JAX, no TensorFlow): cli and sample.py check flags with it.
"""

import difflib
import math

# Step counts, batch sizes and other counts are int32 where they meet JAX
# (TrainState.step, the samplers' step count).
INT32_MAX = 2**31 - 1


class ConfigError(ValueError):
  """A config value is wrong; the message names the field, value and fix."""


class UnknownFieldError(ConfigError):
  """A config has a field the schema lacks; `field` is its dotted path."""

  def __init__(self, message, field):
    super().__init__(message)
    self.field = field


def require(cond, field, value, fix):
  """Raises ConfigError `config.FIELD=VALUE is invalid: FIX` unless `cond`."""
  if not cond:
    raise ConfigError(f'config.{field}={value!r} is invalid: {fix}')


def is_int(v):
  return isinstance(v, int) and not isinstance(v, bool)


def is_number(v):
  return isinstance(v, (int, float)) and not isinstance(v, bool) and (
      math.isfinite(v))


def non_negative(v):
  return is_number(v) and v >= 0


def count(low):
  """An integer in [low, INT32_MAX]."""
  return lambda v: is_int(v) and low <= v <= INT32_MAX


def rate(v):
  """A learning rate: Adam moves each parameter by about this much per
  update, so above 1 it jumps further than a parameter's scale."""
  return is_number(v) and 0 < v <= 1


COUNT = f'must be a positive integer up to {INT32_MAX} (int32)'
COUNT_OR_0 = f'must be 0 or a positive integer up to {INT32_MAX} (int32)'
RATE = ('use a value in (0, 1] (Adam moves each parameter by about this much '
        'per update)')


def check_known_fields(config, schema, prefix='config'):
  """Raises ConfigError for a field of `config` that `schema` does not have."""
  for key in config.keys():
    if key not in schema:
      close = difflib.get_close_matches(key, list(schema.keys()), n=1)
      hint = (f'did you mean {prefix}.{close[0]}?' if close else
              f'the fields there are {", ".join(sorted(schema.keys()))}')
      raise UnknownFieldError(
          f'{prefix}.{key} is not a config field: {hint}',
          f'{prefix}.{key}'.removeprefix('config.'))
    if hasattr(schema[key], 'keys') and hasattr(config[key], 'keys'):
      check_known_fields(config[key], schema[key], f'{prefix}.{key}')
