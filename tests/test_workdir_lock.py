"""The workdir lock on its own: refusal, take-over of abandoned locks, heartbeat."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from vit_jax import workdir_lock


def _write_lock(workdir, **record):
  path = os.path.join(workdir, workdir_lock.LOCK_NAME)
  with open(path, 'w') as f:
    json.dump({'since': '2024-01-01T00:00:00', **record}, f)
  return path


def _dead_pid():
  process = subprocess.Popen([sys.executable, '-c', 'pass'])
  process.wait()
  return process.pid


def test_second_holder_is_refused_with_one_line(tmp_path):
  first = workdir_lock.WorkdirLock(str(tmp_path), stale_after_s=600)
  first.acquire()
  with pytest.raises(workdir_lock.WorkdirBusyError) as e:
    workdir_lock.WorkdirLock(str(tmp_path), stale_after_s=600).acquire()
  message = str(e.value)
  assert '\n' not in message
  for part in (str(tmp_path), socket.gethostname(), f'pid {os.getpid()}',
               'since 20', 'delete ' + first.path):
    assert part in message, part
  first.release()
  assert not os.path.exists(first.path)
  workdir_lock.WorkdirLock(str(tmp_path), stale_after_s=600).acquire()


def test_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path, caplog):
  _write_lock(str(tmp_path), host=socket.gethostname(), pid=_dead_pid())
  lock = workdir_lock.WorkdirLock(str(tmp_path), stale_after_s=600)
  lock.acquire()
  with open(lock.path) as f:
    assert json.load(f)['pid'] == os.getpid()
  assert 'Taking over the lock' in caplog.text


def test_reused_pid_is_not_taken_for_the_holder(tmp_path):
  # Our own pid, but a different start time: the holder was another process.
  _write_lock(str(tmp_path), host=socket.gethostname(), pid=os.getpid(),
              process_start='1')
  workdir_lock.WorkdirLock(str(tmp_path), stale_after_s=600).acquire()


def test_other_host_is_judged_by_its_heartbeat(tmp_path):
  path = _write_lock(str(tmp_path), host='elsewhere', pid=1)
  with pytest.raises(workdir_lock.WorkdirBusyError, match='host elsewhere'):
    workdir_lock.WorkdirLock(str(tmp_path), stale_after_s=600).acquire()
  old = time.time() - 601
  os.utime(path, (old, old))
  lock = workdir_lock.WorkdirLock(str(tmp_path), stale_after_s=600)
  lock.acquire()
  assert time.time() - os.path.getmtime(path) < 60


def test_heartbeat_refreshes_the_mtime_and_stops_after_a_take_over(tmp_path):
  lock = workdir_lock.WorkdirLock(str(tmp_path), stale_after_s=600)
  lock.acquire()
  old = time.time() - 500
  os.utime(lock.path, (old, old))
  lock.heartbeat()
  assert time.time() - os.path.getmtime(lock.path) < 60
  _write_lock(str(tmp_path), host='elsewhere', pid=1)
  with pytest.raises(workdir_lock.WorkdirBusyError, match='no longer'):
    lock.heartbeat()
  lock.release()  # Not ours any more: left in place.
  assert os.path.exists(lock.path)


def test_hold_releases_on_exceptions(tmp_path):
  with pytest.raises(KeyError):
    with workdir_lock.hold(str(tmp_path), 600):
      assert os.path.exists(tmp_path / workdir_lock.LOCK_NAME)
      raise KeyError('boom')
  assert not os.path.exists(tmp_path / workdir_lock.LOCK_NAME)
