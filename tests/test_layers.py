"""Imports run one way: each module imports only modules below it.

The layers, bottom up, and within a layer the order its modules may import
each other in. A package import inside a function (which would hide a
cycle) fails the test too. `pytest -s` prints the order.
"""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = 'diffusion_distill'

LAYERS = (
    ('pure', ('field_checks', 'dataset_info', 'schedules', 'diffusion', 'losses', 'samplers',
              'train_state', 'models.unet', 'models')),
    ('infrastructure', ('checkpoints', 'machine', 'timing',
                        'datasets.digits', 'datasets',
                        'input_pipeline', 'preemption', 'images',
                        'evaluation.frechet', 'evaluation.inception',
                        'evaluation.digits_classifier', 'evaluation.metrics',
                        'evaluation')),
    ('model services', ('inference', 'layout', 'teacher')),
    ('stages', ('trainer', 'stages.base', 'stages.teacher', 'stages.guide', 'stages.distill',
                'stages.consistency', 'stages.evaluate', 'stages')),
    ('orchestration', ('config_checks', 'preflight', 'train', 'cli', '')),
)
ORDER = [m for _, modules in LAYERS for m in modules]


def _modules():
  """{dotted name relative to the package ('' for __init__): path}."""
  out = {}
  root = os.path.join(REPO, PACKAGE)
  for d, _, files in os.walk(root):
    for f in files:
      if f.endswith('.py'):
        rel = os.path.relpath(os.path.join(d, f), root)[:-3].replace(os.sep,
                                                                     '.')
        out[rel[:-len('__init__')].rstrip('.') if rel.endswith(
            '__init__') else rel] = os.path.join(d, f)
  return out


def _package_imports(path, modules):
  """[(imported module relative to the package, inside a function?)].

  `from a.b import c` imports module a.b.c when there is one (a.b is then
  a package whose __init__ is not a dependency), else a.b.
  """
  with open(path) as f:
    tree = ast.parse(f.read())
  found = []

  def visit(node, in_function):
    for child in ast.iter_child_nodes(node):
      inner = in_function or isinstance(
          child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
      names = []
      if isinstance(child, ast.Import):
        names = [a.name for a in child.names]
      elif isinstance(child, ast.ImportFrom) and child.module:
        for a in child.names:
          sub = f'{child.module}.{a.name}'
          names.append(sub if sub[len(PACKAGE) + 1:] in modules else
                       child.module)
      for name in names:
        if name == PACKAGE or name.startswith(PACKAGE + '.'):
          rel = name[len(PACKAGE) + 1:]
          found.append((rel, inner))
      visit(child, inner)

  visit(tree, False)
  return found


def _module_of(rel, modules):
  """The module `rel` names ('a.b.C' may be module 'a.b' and its C)."""
  while rel not in modules and '.' in rel:
    rel = rel.rsplit('.', 1)[0]
  return rel if rel in modules else None


def test_every_module_has_a_layer():
  assert sorted(_modules()) == sorted(ORDER)


@pytest.mark.parametrize('name', ORDER)
def test_imports_run_one_way(name):
  modules = _modules()
  below = set(ORDER[:ORDER.index(name)])
  for rel, in_function in _package_imports(modules[name], modules):
    target = _module_of(rel, modules)
    if target is None or target == name:
      continue  # `from package import x` where x is no module: its __init__.
    assert not in_function, f'{name} imports {target} inside a function'
    assert target in below, (
        f'{name} ({_layer(name)}) imports {target} ({_layer(target)}), which '
        f'is not below it')


def _layer(name):
  return next(layer for layer, modules in LAYERS if name in modules)


def test_print_the_layer_order():
  lines = [f'{layer}: {", ".join(m or "__init__" for m in modules)}'
           for layer, modules in reversed(LAYERS)]
  print('\n'.join(lines))
  assert len(lines) == 5
