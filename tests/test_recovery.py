"""Faults met in practice, through the command line: a second job on the
workdir, an abandoned lock, a damaged newest checkpoint, a failed save."""

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.conftest import make_image_folder
from tests.conftest import run_cli
from tests.test_main import _args
from tests.test_main import _assert_bit_identical
from tests.test_main import _finish
from tests.test_main import _params
from vit_jax import recovery
from vit_jax import workdir_lock

# Checkpoint files of the test model reach ~1 MB; metrics and logs stay small.
_FILE_SIZE_LIMIT = 32 * 1024


@pytest.fixture(name='data', scope='module')
def fixture_data(tmp_path_factory):
  return make_image_folder(tmp_path_factory.mktemp('data'))


@pytest.fixture(name='lone_run', scope='module')
def fixture_lone_run(tmp_path_factory, data):
  """Parameters of an uninterrupted 8-step run (warm-up: steps 0 and 1)."""
  workdir = str(tmp_path_factory.mktemp('lone'))
  _finish(run_cli(_args(workdir, data)))
  return _params(workdir)


def _lock_path(workdir):
  return os.path.join(workdir, workdir_lock.LOCK_NAME)


def test_second_job_is_refused_and_first_ends_as_if_alone(tmp_path, data,
                                                          lone_run):
  workdir = str(tmp_path / 'w')
  first = run_cli(_args(workdir, data))
  deadline = time.monotonic() + 240
  while not os.path.exists(_lock_path(workdir)):
    assert first.poll() is None, first.communicate()[0]
    assert time.monotonic() < deadline
    time.sleep(0.05)
  second = run_cli(_args(workdir, data))
  output, _ = second.communicate(timeout=240)
  assert first.poll() is None  # Still running: the refusal was not a race.
  assert second.returncode == 1
  last = output.strip().splitlines()[-1]
  assert last.startswith(f'Error: workdir {workdir} is in use by another '
                         f'job (host {socket.gethostname()}, pid {first.pid}')
  assert 'Traceback' not in output and 'Training testing' not in output
  _finish(first)
  assert not os.path.exists(_lock_path(workdir))
  _assert_bit_identical(lone_run, _params(workdir))


def test_abandoned_lock_is_taken_over_with_a_warning(tmp_path, data):
  workdir = str(tmp_path / 'w')
  os.makedirs(workdir)
  crashed = subprocess.Popen([sys.executable, '-c', 'pass'])
  crashed.wait()
  with open(_lock_path(workdir), 'w') as f:
    json.dump({'host': socket.gethostname(), 'pid': crashed.pid,
               'since': '2024-01-01T00:00:00'}, f)
  output = _finish(run_cli(_args(workdir, data, '--config.total_steps=2')))
  assert f'Taking over the lock on workdir {workdir}' in output
  assert f'pid {crashed.pid}' in output
  assert os.path.exists(os.path.join(workdir, 'model.npz'))
  assert not os.path.exists(_lock_path(workdir))


def _truncate_largest_file(folder):
  files = [os.path.join(root, name) for root, _, names in os.walk(folder)
           for name in names]
  largest = max(files, key=os.path.getsize)
  os.truncate(largest, os.path.getsize(largest) // 2)


def _checkpoint_folders(workdir):
  return sorted(n for n in os.listdir(workdir) if n.startswith('checkpoint'))


def test_truncated_newest_checkpoint_falls_back_to_the_previous(
    tmp_path, data, lone_run):
  workdir = str(tmp_path / 'w')
  _finish(run_cli(_args(workdir, data, '--config.total_steps=4')))
  assert _checkpoint_folders(workdir) == ['checkpoint_2', 'checkpoint_4']
  _truncate_largest_file(os.path.join(workdir, 'checkpoint_4'))
  output = _finish(run_cli(_args(workdir, data)))  # 8 steps.
  assert 'The checkpoint of step 4' in output and 'cannot be read back' in (
      output)
  assert 'Resuming from the checkpoint of step 2.' in output
  assert 'checkpoint_4.corrupt' in _checkpoint_folders(workdir)
  # Steps 0-1 are warm-up, the same for 4 and 8 total steps; steps 2-3 of
  # the 4-step schedule were in checkpoint 4 and are trained again.
  _assert_bit_identical(lone_run, _params(workdir))


def test_no_restorable_checkpoint_stops_instead_of_starting_over(tmp_path,
                                                                 data):
  workdir = str(tmp_path / 'w')
  _finish(run_cli(_args(workdir, data, '--config.total_steps=2')))
  _truncate_largest_file(os.path.join(workdir, 'checkpoint_2'))
  process = run_cli(_args(workdir, data, '--config.total_steps=4'))
  output, _ = process.communicate(timeout=240)
  assert process.returncode != 0
  last = output.strip().splitlines()[-1]
  assert last.startswith(
      f'Error: No checkpoint in {workdir} can be restored (step 2:')
  assert 'move checkpoint_2 aside' in last
  assert _checkpoint_folders(workdir) == ['checkpoint_2']  # Nothing moved.
  assert 'Training testing from step' not in output


def _limit_file_size():
  """A write past the limit fails with EFBIG, as a full disk fails one."""
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (_FILE_SIZE_LIMIT,) * 2)


def _folder_bytes(folder):
  return {os.path.relpath(os.path.join(root, name), folder):
          open(os.path.join(root, name), 'rb').read()
          for root, _, names in os.walk(folder) for name in names}


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, data):
  workdir = str(tmp_path / 'w')
  _finish(run_cli(_args(workdir, data, '--config.total_steps=2')))
  saved_params = _params(workdir)
  saved_checkpoint = _folder_bytes(os.path.join(workdir, 'checkpoint_2'))
  failing = run_cli(_args(workdir, data), preexec_fn=_limit_file_size)
  output, _ = failing.communicate(timeout=300)
  assert failing.returncode != 0
  assert (f'Error: Saving a checkpoint in {workdir} failed: a file size '
          'limit was hit') in output
  assert 'One checkpoint needs about' in output
  assert 'The checkpoint of step 2 is intact' in output
  assert not os.path.exists(_lock_path(workdir))  # Released on the error.
  assert [n for n in _checkpoint_folders(workdir) if 'tmp' not in n] == [
      'checkpoint_2']
  assert _folder_bytes(os.path.join(workdir, 'checkpoint_2')) == (
      saved_checkpoint)
  assert [n for n in os.listdir(workdir) if 'orbax-checkpoint-tmp' in n]
  # Restorable: a rerun resumes from it (already at its total_steps) and
  # exports exactly the parameters it held; the killed save's folder goes.
  output = _finish(run_cli(_args(workdir, data, '--config.total_steps=2')))
  assert 'Resuming from the checkpoint of step 2.' in output
  assert not [n for n in os.listdir(workdir) if 'tmp' in n]
  _assert_bit_identical(saved_params, _params(workdir))


def test_workdir_of_the_earlier_layout_resumes_there(tmp_path, data,
                                                     lone_run):
  """A workdir written before checkpoints moved to workdir/checkpoint_N
  (they were in workdir/checkpoints/N) resumes from them, keeps writing
  there, and ends bit-identical to an uninterrupted run."""
  workdir = str(tmp_path / 'w')
  _finish(run_cli(_args(workdir, data, '--config.total_steps=4')))
  # The earlier layout, made from this one: checkpoints/2, checkpoints/4.
  os.makedirs(os.path.join(workdir, 'checkpoints'))
  for step in (2, 4):
    os.rename(os.path.join(workdir, f'checkpoint_{step}'),
              os.path.join(workdir, 'checkpoints', str(step)))
  _truncate_largest_file(os.path.join(workdir, 'checkpoints', '4'))
  output = _finish(run_cli(_args(workdir, data)))  # 8 steps.
  assert 'Resuming from the checkpoint of step 2.' in output
  assert _checkpoint_folders(workdir) == ['checkpoints']
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == [
      '4.corrupt', '6', '8']  # The default keep_checkpoints=2.
  _assert_bit_identical(lone_run, _params(workdir))


def test_layout_is_the_earlier_one_only_where_it_holds_checkpoints(tmp_path):
  workdir = str(tmp_path)
  new = recovery.Layout(workdir, 'checkpoint')
  assert recovery.layout_for(workdir) == new
  assert new.step_path(3) == os.path.join(workdir, 'checkpoint_3')
  legacy = os.path.join(workdir, 'checkpoints')
  os.makedirs(os.path.join(legacy, '4.corrupt'))  # Not a step.
  assert recovery.layout_for(workdir) == new
  manager = ocp.CheckpointManager(legacy)  # As earlier versions wrote.
  manager.save(2, args=ocp.args.StandardSave({'x': np.arange(3)}))
  manager.wait_until_finished()
  old = recovery.layout_for(workdir)
  assert old == recovery.Layout(legacy, None)
  assert old.finished_steps() == [2]
  assert old.step_path(2) == os.path.join(legacy, '2')
