"""The ablation script's variants are real config keys with the intended values.

A misspelt key would otherwise fail half an hour into an ablation run.
"""

import os

from absl import flags
from ml_collections import config_flags
import pytest

from tests.conftest import REPO
from tests.conftest import load_benchmark_script


ABLATION = load_benchmark_script('scratch_ablation')


def _parsed_config(argv):
  """The config `python -m vit_jax.main` would build from these arguments."""
  config_args = []
  for i, arg in enumerate(argv):
    if arg == '--config':
      config_args.append(f'--config={os.path.join(REPO, argv[i + 1])}')
    elif arg.startswith('--config.'):
      config_args.append(arg)
  argv = ['prog', *config_args]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', flag_values=flag_values,
                                  sys_argv=argv)  # Overrides come from here.
  flag_values(argv)
  return flag_values.config


@pytest.mark.parametrize('name', list(ABLATION.VARIANTS))
def test_variant_overrides_parse_to_their_values(name):
  args = ABLATION.parse_args(['--out', '/tmp/unused', '--images', '25600',
                              '--only', name,
                              '--set', 'model.patch_dropout=0'])
  _, overrides = ABLATION.VARIANTS[name]
  config = _parsed_config(ABLATION.command(args, overrides, '/tmp/unused'))
  for key, value in overrides.items():
    node = config
    for part in key.split('.'):
      node = node[part]
    assert node == value, key
  assert config.total_steps * config.batch == 25600
  assert config.eval_every == config.total_steps
  if 'warmup_steps' not in overrides:
    assert config.warmup_steps * config.batch == 12800
  if 'model.patch_dropout' not in overrides:  # --set applies to the others.
    assert config.model.patch_dropout == 0


def test_unknown_variant_is_refused_with_the_known_names(capsys):
  with pytest.raises(SystemExit):
    ABLATION.parse_args(['--out', '/tmp/x', '--only', 'base,no_flop'])
  assert 'no_flop' in capsys.readouterr().err
