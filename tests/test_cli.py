"""Flag parsing of every command: one style, both spellings, one-line errors."""

import pytest

from conftest import run_cli
from vit_jax import benchmark
from vit_jax import cli
from vit_jax import evaluate
from vit_jax import hub
from vit_jax import predict
from vit_jax import visualize

# Each command with the arguments it needs besides the shared flags.
COMMANDS = {
    'evaluate': (evaluate.parse_args, ['--workdir', 'runs/x']),
    'predict': (predict.parse_args, ['--workdir', 'runs/x', 'cat.jpg']),
    'visualize': (visualize.parse_args,
                  ['--workdir', 'runs/x', 'cat.jpg', '--out', 'a.png']),
    'benchmark': (benchmark.parse_args, []),
    'hub': (hub.parse_args, ['fetch', 'ViT-B_16']),
}
# The shared flags each command takes.
SHARED = {
    'evaluate': {'dataset': 'cifar10', 'tfds_data_dir': '/data/tfds',
                 'model_name': 'ViT-B_16', 'batch': 64},
    'predict': {'model_name': 'ViT-B_16'},
    'visualize': {'model_name': 'ViT-B_16'},
    'benchmark': {'model_name': 'ViT-Ti_16', 'batch': 32},
    'hub': {'pretrained_dir': '/weights'},
}


def _spellings(values):
  """The same settings as --k=v, --k v, --config.k=v and --config.k v."""
  for style in range(4):
    args = []
    for key, value in values.items():
      name = f'--config.{key}' if style >= 2 else f'--{key}'
      args += [f'{name}={value}'] if style % 2 == 0 else [name, str(value)]
    yield args


@pytest.mark.parametrize('command', sorted(COMMANDS))
def test_shared_flags_parse_the_same_in_every_spelling(command):
  parse, required = COMMANDS[command]
  for args in _spellings(SHARED[command]):
    parsed = vars(parse(required + args))
    assert {k: parsed[k] for k in SHARED[command]} == SHARED[command], args


@pytest.mark.parametrize('command,misspelt,suggested', [
    ('evaluate', '--tfds_dir=/data', '--tfds_data_dir'),
    ('evaluate', '--config.tfds_dat_dir=/data', '--config.tfds_data_dir'),
    ('predict', '--modle_name=ViT-B_16', '--model_name'),
    ('visualize', '--label=names.txt', '--labels'),
    ('benchmark', '--model=ViT-B_16', '--model_name'),
    ('hub', '--cache-dir=/tmp/w', '--cache_dir'),
])
def test_misspelt_flag_gets_one_line_with_the_nearest_names(
    command, misspelt, suggested, capsys):
  parse, required = COMMANDS[command]
  with pytest.raises(SystemExit) as exit_info:
    parse(required + [misspelt])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1, err  # One line, no usage dump.
  assert err.startswith(f'Error: unknown flag {misspelt}.')
  assert suggested in err.split('Did you mean:')[1]


@pytest.mark.parametrize('command', sorted(COMMANDS))
def test_abbreviated_flags_are_refused(command, capsys):
  parse, required = COMMANDS[command]
  with pytest.raises(SystemExit):
    parse(required + ['--model_n=ViT-B_16', '--pretrained_d=/w'])
  assert capsys.readouterr().err.startswith('Error: unknown flag --')


def test_workdir_and_checkpoint_exclude_each_other(capsys):
  with pytest.raises(SystemExit):
    evaluate.parse_args(['--workdir', 'a', '--checkpoint', 'b.npz'])
  err = capsys.readouterr().err
  assert err.startswith('Error: argument --checkpoint: not allowed with')
  assert err.count('\n') == 1


def test_main_takes_the_short_shared_names_as_config_keys():
  argv = ['prog', '--config', 'c.py', '--dataset', 'cifar10',
          '--tfds_data_dir=/data', '--config.batch=8', '--workdir', 'w',
          '--batch', '16']
  assert cli.as_config_overrides(argv) == [
      'prog', '--config', 'c.py', '--config.dataset=cifar10',
      '--config.tfds_data_dir=/data', '--config.batch=8', '--workdir', 'w',
      '--config.batch=16']


@pytest.mark.parametrize('flag', ['--model_name', '--config.model_name'])
def test_main_says_where_the_model_is_chosen(flag):
  with pytest.raises(SystemExit) as exit_info:
    cli.as_config_overrides(['prog', f'{flag}=ViT-L_16'])
  message = str(exit_info.value.code)
  assert message.startswith(f'Error: {flag} is not a flag of vit_jax.main.')
  assert 'cifar10_finetune.py:model=ViT-L_16' in message


def test_main_uses_the_short_data_dir_flag(tmp_path):
  """End to end: --tfds_data_dir reaches the config of vit_jax.main."""
  empty = tmp_path / 'no_data'
  empty.mkdir()
  proc = run_cli(['--config', 'configs/cifar10_scratch.py:cpu',
                  '--workdir', str(tmp_path / 'run'),
                  f'--tfds_data_dir={empty}', '--config.tfds_download=False'])
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 1, out
  last = out.strip().splitlines()[-1]
  assert last.startswith('Error: TFDS dataset'), last
  assert str(empty) in last
