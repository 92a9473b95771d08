"""One job per workdir: a lock file that a second job on the same folder sees.

Two jobs writing checkpoints into one workdir collide inside orbax (and would
overwrite each other's checkpoints), so the job's process 0 creates
WORKDIR/lock.json exclusively at start and deletes it at the end, also when
the run fails. The other processes of a multi-host job wait until process 0
has it.

A lock left by a crashed job must not block the workdir forever:
- on the holder's host its pid (and, on Linux, the process start time, so a
  reused pid is not mistaken for the holder) tells whether it still runs;
- from another host (a shared file system) only the lock file's mtime can be
  seen: the holder refreshes it at every progress line (`heartbeat`), and a
  lock whose heartbeat is older than `stale_after_s` is taken over.
A job whose lock was taken over (its heartbeat was judged stale) stops at its
next heartbeat rather than write alongside the new holder.
"""

import contextlib
import datetime
import json
import os
import socket
import time
from typing import Callable, Iterator, Optional

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

LOCK_NAME = 'lock.json'


class WorkdirBusyError(RuntimeError):
  """Another job holds the workdir; the message is one line saying what to do."""


def _process_start(pid: int) -> Optional[str]:
  """The process's start time in clock ticks since boot (Linux), else None."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _is_running(pid: int, start: Optional[str]) -> bool:
  """Whether `pid` on this host is still the process that wrote the lock."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # Runs, under another user.
  now = _process_start(pid)
  return start is None or now is None or now == start


def _owner_record() -> dict:
  pid = os.getpid()
  return {'host': socket.gethostname(), 'pid': pid,
          'since': datetime.datetime.now().isoformat(timespec='seconds'),
          'process_start': _process_start(pid)}


class WorkdirLock:
  """The lock file of one workdir, as held (or not) by this process."""

  def __init__(self, workdir: str, stale_after_s: float):
    self.workdir = os.path.abspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_NAME)
    self.stale_after_s = stale_after_s
    self._record = None

  def _read(self) -> Optional[dict]:
    """The holder's record, None if no lock; {} if unreadable (half-written)."""
    try:
      with open(self.path) as f:
        return json.load(f)
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return {}

  def _heartbeat_age(self) -> float:
    try:
      return time.time() - os.stat(self.path).st_mtime
    except FileNotFoundError:
      return float('inf')

  def _is_abandoned(self, holder: dict) -> bool:
    """Dead holder on this host, else no heartbeat for stale_after_s.

    An unreadable record (a job writing it this instant) counts as alive
    until its mtime is stale.
    """
    if holder.get('host') == socket.gethostname() and 'pid' in holder:
      return not _is_running(holder['pid'], holder.get('process_start'))
    return self._heartbeat_age() > self.stale_after_s

  def _try_create(self) -> bool:
    record = _owner_record()
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, 'w') as f:
      json.dump(record, f)
    self._record = record
    return True

  def _busy_message(self, holder: dict) -> str:
    age = self._heartbeat_age()
    return (f'workdir {self.workdir} is in use by another job (host '
            f'{holder.get("host", "?")}, pid {holder.get("pid", "?")}, since '
            f'{holder.get("since", "?")}; last heartbeat {age:.0f} s ago). '
            'Wait for it to finish, stop it, or use another workdir; if no '
            f'such job runs any more, delete {self.path}.')

  def acquire(self):
    """Takes the lock, taking over an abandoned one; else WorkdirBusyError."""
    for _ in range(3):  # Another try only after a lock vanished or moved.
      if self._try_create():
        return
      holder = self._read()
      if holder is None:
        continue  # Released between our two looks.
      if not self._is_abandoned(holder):
        raise WorkdirBusyError(self._busy_message(holder))
      self._take_over(holder)
    raise WorkdirBusyError(self._busy_message(self._read() or {}))

  def _take_over(self, holder: dict):
    """Moves the abandoned lock away (atomically: one job wins) and warns."""
    age = self._heartbeat_age()
    moved = f'{self.path}.abandoned-{os.getpid()}'
    try:
      os.rename(self.path, moved)
    except FileNotFoundError:
      return  # Another job moved it first; the next try decides.
    os.remove(moved)
    logging.warning(
        'Taking over the lock on workdir %s from a job that is gone (host %s, '
        'pid %s, since %s; last heartbeat %.0f s ago).', self.workdir,
        holder.get('host', '?'), holder.get('pid', '?'),
        holder.get('since', '?'), age)

  def heartbeat(self):
    """Refreshes the mtime; stops the run if another job took the lock."""
    holder = self._read()
    if holder != self._record:
      holder = holder or {}
      raise WorkdirBusyError(
          f'The lock on workdir {self.workdir} is no longer this job\'s (now '
          f'host {holder.get("host", "?")}, pid {holder.get("pid", "?")}; '
          f'taken over after no heartbeat for {self.stale_after_s:.0f} s?). '
          'Stopping so that two jobs do not write the same checkpoints.')
    os.utime(self.path)

  def release(self):
    """Deletes the lock file if it is still ours."""
    if self._record is not None and self._read() == self._record:
      os.remove(self.path)
    self._record = None


@contextlib.contextmanager
def hold(workdir: str, stale_after_s: float) -> Iterator[Callable[[], None]]:
  """Holds the workdir for this job; yields its heartbeat function.

  Process 0 takes the lock; the other processes wait at a barrier (the
  broadcast of its outcome), so that all stop if the workdir is taken.
  """
  lock = WorkdirLock(workdir, stale_after_s)
  refused = None
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except WorkdirBusyError as e:
      refused = e
  if jax.process_count() > 1:
    taken = multihost_utils.broadcast_one_to_all(np.int32(refused is None))
    if not taken and refused is None:
      refused = WorkdirBusyError(
          f'process 0 could not lock workdir {lock.workdir} (see its log).')
  if refused is not None:
    raise refused
  try:
    yield lock.heartbeat if jax.process_index() == 0 else lambda: None
  finally:
    lock.release()
