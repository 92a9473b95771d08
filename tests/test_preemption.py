"""SIGTERM and Ctrl-C through `python -m vit_jax.main`: the step reached is
saved, the workdir released, and the resumed run ends bit-identical."""

import json
import os
import random
import re
import signal
import time

import pytest

from tests.conftest import make_image_folder
from tests.conftest import free_port
from tests.conftest import wait_all
from tests.conftest import run_cli
from vit_jax import checkpoint
from vit_jax import preemption
from vit_jax import reports

# Steps: room to stop in the middle (two processes agree 1-2 s after the
# signal, and their steps are slower on a small machine: fewer suffice).
_TOTAL = {1: 120, 2: 40}


def _args(workdir, data, total, *extra):
  """A run whose only scheduled checkpoint and evaluation are at its end."""
  return ['--config', 'configs/cifar10_scratch.py:cpu,model=testing',
          '--workdir', workdir, f'--config.dataset={data}',
          '--config.model.patches.size=(8, 8)', '--config.model.transformer.num_layers=1',
          '--config.pp.train=train', '--config.pp.test=test',
          '--config.batch=8', '--config.batch_eval=4',
          f'--config.total_steps={total}', '--config.warmup_steps=2',
          '--config.progress_every=1', '--config.eval_every=1000',
          '--config.checkpoint_every=1000', '--config.model.transformer.dropout_rate=0.1',
          '--config.train_minutes=0', '--config.eval_count=0', *extra]


def _two_process_env():
  return {'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
          'JAX_CPU_COLLECTIVES_IMPLEMENTATION': 'gloo'}


def _start(workdir, data, processes, *extra):
  """One run of `processes` processes (on 127.0.0.1 if more than one)."""
  args = _args(workdir, data, _TOTAL[processes], *extra)
  if processes == 1:
    return [run_cli(args)]
  address = f'127.0.0.1:{free_port()}'
  return [run_cli(args + [
      f'--coordinator_address={address}', f'--num_processes={processes}',
      f'--process_id={i}'], env_extra=_two_process_env())
          for i in range(processes)]


def _model(workdir):
  return checkpoint.flatten(checkpoint.load(os.path.join(workdir,
                                                         'model.npz')))


def _trained_steps(workdir):
  """The newest step in metrics.jsonl with training metrics (0: none)."""
  try:
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      lines = [json.loads(line) for line in f if '"train_loss"' in line]
  except (FileNotFoundError, ValueError):
    return 0  # Not there yet, or a line half written.
  return max((line['step'] for line in lines), default=0)


def _signal_after(processes, workdir, step, signum):
  """Sends `signum` to the last process once `step` steps are trained."""
  deadline = time.monotonic() + 300
  while _trained_steps(workdir) < step:
    for process in processes:
      assert process.poll() is None, process.communicate()[0]
    assert time.monotonic() < deadline, 'training did not start'
    time.sleep(0.01)
  processes[-1].send_signal(signum)


@pytest.fixture(name='data', scope='module')
def fixture_data(tmp_path_factory):
  return make_image_folder(tmp_path_factory.mktemp('data'))


@pytest.fixture(name='straight', scope='module')
def fixture_straight(tmp_path_factory, data):
  """model.npz of uninterrupted runs, by number of processes."""
  models = {}

  def model(processes):
    if processes not in models:
      workdir = str(tmp_path_factory.mktemp(f'straight{processes}'))
      wait_all(_start(workdir, data, processes), 0)
      models[processes] = _model(workdir)
    return models[processes]

  return model


@pytest.mark.parametrize('signum, processes', [
    (signal.SIGTERM, 1), (signal.SIGINT, 1), (signal.SIGTERM, 2)],
                         ids=['sigterm', 'ctrl_c', 'sigterm_two_processes'])
def test_a_signal_saves_the_step_reached_and_resume_is_bit_exact(
    tmp_path, data, straight, signum, processes):
  seed = random.randrange(2**31)
  at = random.Random(seed).randint(2, _TOTAL[processes] // 4)
  context = f'{signal.Signals(signum).name} after step {at} (seed {seed})'
  workdir = str(tmp_path / 'w')
  # A grace period too short for any save: said once at start.
  running = _start(workdir, data, processes,
                   '--config.preemption_grace_seconds=0.5')
  _signal_after(running, workdir, at, signum)
  outputs = wait_all(running, preemption.EXIT_STATUS)
  saved = []
  for output in outputs:
    last = output.strip().splitlines()[-1]
    match = re.fullmatch(r'Stopped by (.+?) at step (\d+): saved the '
                         r'checkpoint of step \d+ in (.*); rerun the same '
                         r'command to resume \(exit status 75\)\.', last)
    assert match, (context, output)
    # The message names the step's folder.
    assert match.group(3) == os.path.join(
        os.path.abspath(workdir), f'checkpoint_{match.group(2)}'), context
    assert 'Traceback' not in output, (context, output)
    saved.append(int(match.group(2)))
  assert len(set(saved)) == 1, (context, saved)  # Every process, one step.
  step = saved[0]
  assert at <= step < _TOTAL[processes], context
  assert 'is estimated to take' in outputs[0], context
  if processes == 1:
    assert f'Stopped by {signal.Signals(signum).name}' in outputs[0]
  folders = [n for n in os.listdir(workdir) if n.startswith('checkpoint')]
  assert folders == [f'checkpoint_{step}'], context
  assert _trained_steps(workdir) == step, context  # Metrics flushed.
  assert not os.path.exists(os.path.join(workdir, 'lock.json')), context
  assert not os.path.exists(os.path.join(workdir, 'model.npz')), context
  outputs = wait_all(_start(workdir, data, processes), 0)
  assert f'Resuming from the checkpoint of step {step}' in outputs[0]
  expected, actual = straight(processes), _model(workdir)
  assert expected.keys() == actual.keys()
  for key in expected:
    assert expected[key].tobytes() == actual[key].tobytes(), (context, key)


def test_the_grace_warning_compares_the_estimated_save():
  megabytes = 10**6
  assert preemption.grace_warning(100 * megabytes, 30, False) is None
  assert preemption.grace_warning(100 * megabytes, 0, False) is None
  warning = preemption.grace_warning(5000 * megabytes, 30, False)
  assert '5,000 MB' in warning and '51.0 s' in warning
  assert 'grace period of 30 s' in warning
  # Several processes: JAX's notifier needs up to ~2 s more to agree.
  assert preemption.grace_warning(2800 * megabytes, 30, False) is None
  assert preemption.grace_warning(2800 * megabytes, 30, True) is not None


def test_ctrl_c_in_a_command_is_one_line_without_traceback(capsys):
  def interrupted():
    raise KeyboardInterrupt

  status = preemption.exit_on_ctrl_c(interrupted, 'nothing was written.')
  assert status == preemption.INTERRUPTED_STATUS == 130
  assert capsys.readouterr().err == 'Interrupted: nothing was written.\n'
  assert preemption.exit_on_ctrl_c(lambda: 0, 'unused') == 0


def test_evaluation_outputs_are_whole_or_absent(tmp_path, monkeypatch):
  summary = {'num_examples': 1}

  def interrupted_plot(unused_summary, path, unused_title=''):
    with open(path, 'w') as f:
      f.write('half a png')
    raise KeyboardInterrupt

  monkeypatch.setattr(reports, 'plot_confusion', interrupted_plot)
  with pytest.raises(KeyboardInterrupt):
    reports.write_outputs(summary, str(tmp_path), 'test[:5]')
  # The JSON was complete and stays; the interrupted picture left nothing.
  assert sorted(os.listdir(tmp_path)) == ['eval_test_5.json']
