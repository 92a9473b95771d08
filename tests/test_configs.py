"""Experiment configs restate only what differs from the base config."""

import ast
import pathlib

import pytest

from vit_jax.configs import common

CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / 'configs'
EXPERIMENTS = sorted(CONFIG_DIR.glob('*.py'))


def _literal_assignments(path: pathlib.Path):
  """(line, dotted key, value) for each `config.a.b = <literal>` in a file."""
  for node in ast.walk(ast.parse(path.read_text())):
    if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
      continue
    target = ast.unparse(node.targets[0])
    if not target.startswith('config.'):
      continue
    try:
      value = ast.literal_eval(node.value)
    except ValueError:
      continue  # Computed values (e.g. chosen by resolution) are not checked.
    yield node.lineno, target[len('config.'):], value


def _base_value(key: str):
  """The base config's value of `key`; None where the base has none (its
  model and pp are set by the experiment)."""
  value = common.get_config()
  for part in key.split('.'):
    if value is None:
      return None
    value = value[part]
  return value


def test_there_are_experiment_configs_to_check():
  assert {p.name for p in EXPERIMENTS} >= {'cifar10_finetune.py',
                                           'cifar10_scratch.py'}


@pytest.mark.parametrize('path', EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_configs_set_no_key_to_its_base_value(path):
  restated = [f'{path.name}:{line}: config.{key} = {value!r}'
              for line, key, value in _literal_assignments(path)
              if type(_base_value(key)) is type(value)
              and _base_value(key) == value]
  assert not restated, 'equal to the base config:\n' + '\n'.join(restated)
