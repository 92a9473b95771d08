"""The command line, driven as a user would: resume after a kill, devices."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import REPO
from tests.conftest import run_cli
from vit_jax import checkpoint


def _args(workdir, data, *extra):
  return ['--config', 'configs/cifar10_scratch.py:cpu,model=testing',
          '--workdir', workdir, f'--config.dataset={data}',
          '--config.model.patches.size=(8, 8)', '--config.pp.train=train',
          '--config.pp.test=test', '--config.batch=8',
          '--config.batch_eval=4', '--config.total_steps=8',
          '--config.warmup_steps=2', '--config.progress_every=1',
          '--config.eval_every=4', '--config.checkpoint_every=2',
          '--config.aug.randaugment_ops=1', '--config.aug.mixup_alpha=0.5',
          '--config.model.transformer.dropout_rate=0.1',
          # A fixed step count, evaluations and checkpoints (the preset's
          # own learning rate and optimizer).
          '--config.train_minutes=0', '--config.eval_count=0', *extra]


def _finish(process, timeout=300):
  output, _ = process.communicate(timeout=timeout)
  assert process.returncode == 0, output
  return output


def _params(workdir):
  return checkpoint.flatten(checkpoint.load(os.path.join(workdir,
                                                         'model.npz')))


def test_resumed_runs_end_bit_identical_to_a_straight_one(tmp_path,
                                                          image_folder):
  """One straight run (with --verbose) against a killed-and-resumed run and
  against a budgeted run killed and resumed with a higher step limit."""
  straight = str(tmp_path / 'straight')
  output = _finish(run_cli(_args(straight, image_folder, '--verbose')))
  # --verbose brings back the libraries' lines and the config.
  assert 'checkpoint_manager.py' in output and 'Config:' in output
  resumed = str(tmp_path / 'resumed')
  _kill_after_checkpoint(run_cli(_args(resumed, image_folder)), resumed, 2)
  output = _finish(run_cli(_args(resumed, image_folder)))
  assert 'Resuming from the checkpoint of step' in output
  _assert_bit_identical(_params(straight), _params(resumed))
  # 10 minutes fit far more than 8 steps of this model: the budget chooses
  # the most it may, total_steps=8; 4 evaluations: every 2 steps.
  budgeted = str(tmp_path / 'budgeted')
  timed = ['--config.train_minutes=10', '--config.eval_count=4']
  process = run_cli(_args(budgeted, image_folder, *timed))
  _kill_after_checkpoint(process, budgeted, 2)
  with open(os.path.join(budgeted, 'budget.json')) as f:
    assert json.load(f)['total_steps'] == 8
  # Measured again, a limit of 20 would be chosen: the stored 8 must win.
  output = _finish(run_cli(_args(budgeted, image_folder, *timed,
                                 '--config.total_steps=20')))
  assert 'Keeping total_steps=8' in output
  assert 'Resuming from the checkpoint of step' in output
  # Evaluations and checkpoints do not change training: the same parameters.
  _assert_bit_identical(_params(straight), _params(budgeted))


def _assert_bit_identical(expected, actual):
  assert expected.keys() == actual.keys()
  for key in expected:
    assert expected[key].tobytes() == actual[key].tobytes(), key


def _kill_after_checkpoint(process, workdir, step):
  checkpoint_dir = os.path.join(workdir, f'checkpoint_{step}')
  deadline = time.monotonic() + 240
  while not os.path.exists(checkpoint_dir):
    assert process.poll() is None, process.communicate()[0]
    assert time.monotonic() < deadline
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert not os.path.exists(os.path.join(workdir, 'model.npz'))


def test_four_devices_give_the_parameters_of_one(tmp_path, image_folder):
  results = {}
  for devices in (1, 4):
    workdir = str(tmp_path / f'd{devices}')
    flags = f'--xla_force_host_platform_device_count={devices}'
    output = _finish(run_cli(_args(workdir, image_folder),
                             env_extra={'XLA_FLAGS': flags}))
    assert f'all devices: {devices}' in output
    results[devices] = _params(workdir)
  key_biases = [k for k in results[1] if k.endswith('key/bias')]
  assert len(key_biases) == 1  # The 'testing' model's one block.
  for key in key_biases:  # Zero gradient, exactly: they never move.
    assert results[4][key].tobytes() == results[1][key].tobytes(), key
  # The rest differ by float rounding (partial sums per device), which
  # Adam scales up where a gradient is as small as its eps (1e-8), then
  # training grows: 2.8e-5 here after 8 steps at lr 8e-3 (growth over
  # steps: BENCHMARKS.md). One step moves an array by up to the lr, so a
  # wrong gradient reduction still fails by ~80x.
  for key in results[1]:
    np.testing.assert_allclose(results[4][key], results[1][key], atol=1e-4,
                               err_msg=key)


def test_unknown_config_key_is_one_line_with_suggestions(tmp_path):
  process = run_cli(['--config', 'configs/cifar10_scratch.py:cpu',
                     '--workdir', str(tmp_path), '--config.batchsize=8'])
  output, _ = process.communicate(timeout=120)
  assert process.returncode != 0
  last = output.strip().splitlines()[-1]
  assert last.startswith("Error: unknown config key 'batchsize'")
  assert 'batch' in last and 'Traceback' not in output


@pytest.mark.parametrize('devices', [3])
def test_batch_not_divisible_by_devices_is_refused(tmp_path, image_folder,
                                                   devices):
  process = run_cli(_args(str(tmp_path / 'w'), image_folder),
                    env_extra={'XLA_FLAGS': '--xla_force_host_platform_'
                                            f'device_count={devices}'})
  output, _ = process.communicate(timeout=300)
  assert process.returncode != 0
  assert 'config.batch=8 must be divisible by the number of devices (3)' in (
      output)


def test_a_budget_too_small_to_train_ends_with_one_line(tmp_path,
                                                        image_folder):
  process = run_cli(_args(str(tmp_path / 'w'), image_folder,
                          '--config.train_minutes=0.01'))
  output, _ = process.communicate(timeout=300)
  assert process.returncode == 1
  assert output.strip().splitlines()[-1].startswith(
      'Error: config.train_minutes=0.01 leaves no time to train:')
  assert 'Traceback' not in output


def _quick_args(workdir, data, *extra):
  """8 steps of a one-layer model: evaluations at 4 and 8, a line every 4."""
  return _args(workdir, data, '--config.model.transformer.num_layers=1',
               '--config.progress_every=4', '--config.checkpoint_every=4',
               *extra)


def _source_file(line):
  """'I1128 11:54:56.449 1404 train.py:105] ...' -> 'train.py'."""
  return line.split(']')[0].split()[-1].split(':')[0]


def test_a_log_file_gets_our_lines_only_and_curves_at_each_evaluation(
    tmp_path, image_folder):
  workdir = str(tmp_path / 'w')
  process = run_cli(_quick_args(workdir, image_folder))
  curves, done = os.path.join(workdir, 'curves.png'), os.path.join(
      workdir, 'model.npz')
  while not os.path.exists(curves):  # Drawn at the evaluation of step 4.
    assert process.poll() is None, process.communicate()[0]
    time.sleep(0.02)
  assert not os.path.exists(done)
  with open(curves, 'rb') as f:
    at_first_evaluation = f.read()
  output = _finish(process)
  with open(curves, 'rb') as f:
    at_the_end = f.read()
  assert at_first_evaluation[:8] == at_the_end[:8] == b'\x89PNG\r\n\x1a\n'
  assert at_the_end != at_first_evaluation  # Redrawn with step 8 in it.
  lines = output.splitlines()
  headed = [line for line in lines if line[:1] in 'IWE' and '] ' in line]
  # Every INFO line is the project's own; none of orbax's or TensorFlow's.
  assert {_source_file(line) for line in headed} <= {
      'main.py', 'input_pipeline.py', 'train.py', 'progress.py'}, output
  assert 'orbax' not in output.lower() and 'tensorflow' not in output.lower()
  assert '\r' not in output  # No bar in a file.
  progress_lines = [line.split('] ')[1].split(' | ')[0] for line in headed
                    if _source_file(line) == 'progress.py']
  assert progress_lines == ['step 4/8'] * 2 + ['step 8/8'] * 2
  assert 'Config:' not in output  # In workdir/config.json instead.
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['model']['transformer']['num_layers'] == 1
  assert 'Training testing from step 0 to 8: ' in output
  assert len(lines) <= 20, output


def test_on_a_terminal_the_bar_updates_in_place(tmp_path, image_folder):
  leader, follower = os.openpty()
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  process = subprocess.Popen(
      [sys.executable, '-m', 'vit_jax.main',
       *_quick_args(str(tmp_path / 'w'), image_folder)],
      cwd=REPO, env=env, stdin=follower, stdout=follower, stderr=follower)
  os.close(follower)
  shown = _read_until_closed(leader).decode(errors='replace')
  assert process.wait(timeout=60) == 0, shown
  updates = [part for part in shown.split('\r') if 'img/s' in part and
             '%|' in part]
  # The bar redraws its one line at least at each of the 2 metric flushes.
  assert len(updates) >= 2, shown
  assert 'step 8/8' in updates[-1] and 'img/s' in updates[-1], shown
  assert 'loss ' in shown and 'ETA ' in shown
  assert 'progress.py' not in shown  # No periodic log lines on a terminal.
  assert 'step 8/8 | test acc ' in shown and 'Done.' in shown


def _read_until_closed(fd):
  chunks = []
  while True:
    try:
      chunk = os.read(fd, 65536)
    except OSError:  # EIO: the child closed the terminal.
      break
    if not chunk:
      break
    chunks.append(chunk)
  os.close(fd)
  return b''.join(chunks)


def _closed_port_url() -> str:
  """A URL nothing listens on: what being offline looks like."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return f'http://127.0.0.1:{s.getsockname()[1]}'


def _error_lines(output):
  """The output's lines from its one `Error:` line on (a message may have
  indented detail lines below it)."""
  errors = [i for i, line in enumerate(output.splitlines())
            if line.startswith('Error:')]
  assert len(errors) == 1, output
  return output.splitlines()[errors[0]:]


def test_offline_fine_tuning_without_weights_is_an_error_and_leaves_nothing(
    tmp_path, image_folder):
  workdir, empty = tmp_path / 'new' / 'w', tmp_path / 'empty'
  empty.mkdir()
  offline = _closed_port_url()
  process = run_cli(
      ['--config', 'configs/cifar10_finetune.py:model=ViT-Ti_16',
       '--workdir', str(workdir), f'--config.pretrained_dir={empty}',
       f'--config.dataset={image_folder}', '--config.pp.train=train',
       '--config.pp.test=test', '--config.pp.crop=32', '--config.batch=8',
       '--config.batch_eval=4', '--config.accum_steps=1'],
      env_extra={'VIT_JAX_BUCKET_URL': offline, 'HF_ENDPOINT': offline,
                 'HF_HOME': str(tmp_path / 'hf')})
  output, _ = process.communicate(timeout=300)
  assert process.returncode == 1, output
  assert 'Traceback' not in output and 'oneDNN' not in output, output
  error = _error_lines(output)
  assert error[0] == ('Error: Could not get pretrained weights for '
                      'ViT-Ti_16. Tried, in order:'), output
  assert all(line.startswith(' ') or line[:1].isupper() for line in error)
  assert any(f'{empty}/ViT-Ti_16.npz' in line for line in error)
  # Nothing the failed run made stays: not the workdir, nor its parent.
  assert not (tmp_path / 'new' / 'w').exists(), os.listdir(tmp_path / 'new')
  assert os.listdir(empty) == []


def test_failing_in_an_existing_workdir_leaves_it_as_it_was(tmp_path):
  workdir = tmp_path / 'w'
  workdir.mkdir()
  (workdir / 'notes.txt').write_text('mine')
  process = run_cli(_args(str(workdir), str(tmp_path / 'no_such_data')))
  output, _ = process.communicate(timeout=300)
  assert process.returncode == 1, output
  assert 'Traceback' not in output and _error_lines(output)
  assert os.listdir(workdir) == ['notes.txt']  # No checkpoint_N/, lock.json.


def test_evaluate_on_a_missing_workdir_says_the_workdir_is_missing(tmp_path):
  missing = str(tmp_path / 'runs' / 'does_not_exist')
  result = subprocess.run(
      [sys.executable, '-m', 'vit_jax.evaluate', '--workdir', missing],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert result.returncode == 1
  assert result.stdout == ''
  assert result.stderr.strip().splitlines() == [
      f"Error: --workdir '{missing}' does not exist. Pass the workdir of a "
      'finished vit_jax.main run (it holds model.npz and run.json), or a '
      'parameter file with --checkpoint.']  # Not: fetch 'does_not_exist'.


def test_the_accelerator_recipe_on_a_cpu_names_the_cpu_preset(
    tmp_path, image_folder):
  workdir = str(tmp_path / 'gpu_recipe')
  process = run_cli(
      ['--config', 'configs/cifar10_scratch.py:model=testing',
       '--workdir', workdir, f'--config.dataset={image_folder}',
       '--config.model.patches.size=(8, 8)',
       '--config.model.transformer.num_layers=1',
       '--config.pp.train=train', '--config.pp.test=test',
       '--config.batch=8', '--config.batch_eval=4',
       # Days even at a millisecond a step.
       '--config.total_steps=1000000000', '--config.progress_every=1000'])
  lines, deadline = [], time.monotonic() + 240
  while not any('sized for an accelerator' in line for line in lines):
    assert time.monotonic() < deadline and process.poll() is None, lines
    lines.append(process.stdout.readline())
  process.kill()
  process.communicate()
  warning = [line for line in lines if 'sized for an accelerator' in line]
  assert len(warning) == 1 and warning[0].startswith('W'), lines
  assert 'on this CPU its 999999998 steps left take about ' in warning[0]
  assert warning[0].rstrip().endswith(
      'For a CPU, train the preset meant for it: python -m vit_jax.main '
      f'--config configs/cifar10_scratch.py:cpu --workdir {workdir}_cpu.')
