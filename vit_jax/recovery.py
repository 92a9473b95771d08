"""Checkpoints that survive faults: restore falls back, a failed save explains.

orbax makes each save atomic (a temporary folder renamed when complete), but
a finished checkpoint can still be damaged later: truncated by a full disk, a
node lost during the final rename, a bad copy between machines. Restoring
therefore tries the newest checkpoint first and falls back to older ones. The
damaged ones are moved aside (checkpoint_NN.corrupt) only once an older one
has restored: a config that fits none of them (say, a changed model) moves
nothing and stops with an error instead of silently training from scratch.

Where they are: `workdir/checkpoint_<step>/`, where the original's flax
checkpoints are, so its code and tests find them. Workdirs written by
earlier versions of vit_jax keep `workdir/checkpoints/<step>/` and resume
from there (`layout_for`).
"""

import contextlib
import dataclasses
import errno
import os
import re
import shutil
from typing import Any, Iterator, Optional

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")  # In tensorstore errors.
_REASONS = {errno.ENOSPC: 'the disk is full', errno.EDQUOT: 'the disk quota '
            'is used up', errno.EFBIG: 'a file size limit was hit'}


class NoRestorableCheckpointError(RuntimeError):
  """Checkpoints exist but none reads back; nothing was moved or deleted."""


class CheckpointSaveError(RuntimeError):
  """A save failed; says where, why, and how much space a checkpoint needs."""


def _first_line(error: BaseException, limit: int = 200) -> str:
  line = (str(error).strip().splitlines() or [type(error).__name__])[0]
  return line if len(line) <= limit else line[:limit] + ' ...'


STEP_PREFIX = 'checkpoint'  # workdir/checkpoint_<step>/, as the original.
LEGACY_FOLDER = 'checkpoints'  # Earlier versions: workdir/checkpoints/<step>/.


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where a run's checkpoints are: the folder orbax manages and the prefix
  of its step folders. Every step-folder name comes from here (orbax's own
  name format), so the manager and the recovery code cannot disagree."""
  directory: str
  step_prefix: Optional[str]

  def manager_options(self, **options) -> ocp.CheckpointManagerOptions:
    return ocp.CheckpointManagerOptions(step_prefix=self.step_prefix,
                                        **options)

  def _name_format(self) -> ocp.step.NameFormat:
    """The names the manager gives step folders (same prefix, orbax's code)."""
    return ocp.step.standard_name_format(step_prefix=self.step_prefix)

  def step_path(self, step: int) -> str:
    return os.path.join(self.directory, self._name_format().build_name(step))

  def finished_steps(self) -> list[int]:
    """Steps with a finished checkpoint folder; other files of the folder
    (metrics, model.npz, moved-aside or temporary folders) are not steps."""
    if not os.path.isdir(self.directory):
      return []
    return sorted(m.step for m in self._name_format().find_all(self.directory))


def layout_for(workdir: str) -> Layout:
  """`workdir/checkpoint_<step>/`; a workdir that already holds checkpoints
  in `checkpoints/<step>/` (earlier versions) keeps that layout, so that it
  resumes and its later checkpoints join the earlier ones."""
  workdir = os.path.abspath(workdir)
  legacy = Layout(os.path.join(workdir, LEGACY_FOLDER), None)
  if legacy.finished_steps():
    return legacy
  return Layout(workdir, STEP_PREFIX)


def _aside_path(layout: Layout, step: int) -> str:
  """A free name next to the damaged folder: checkpoint_NN.corrupt[N]."""
  path = layout.step_path(step) + '.corrupt'
  count = 1
  while os.path.exists(path):
    count += 1
    path = f'{layout.step_path(step)}.corrupt{count}'
  return path


def _move_aside(manager: ocp.CheckpointManager, layout: Layout,
                steps: list[int]):
  """Process 0 renames damaged step folders to <folder>.corrupt (a name
  orbax takes for no step); all then reload the manager's list of steps."""
  if jax.process_index() == 0:
    for step in steps:
      target = _aside_path(layout, step)
      os.rename(layout.step_path(step), target)
      logging.warning('Moved the unreadable checkpoint of step %d to %s.',
                      step, target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('damaged checkpoints moved aside')
  manager.reload()


def restore_newest(manager: ocp.CheckpointManager, layout: Layout,
                   abstract_state: Any) -> Any:
  """The newest checkpoint that reads back whole; damaged newer ones aside."""
  failed = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      state = manager.restore(step,
                              args=ocp.args.StandardRestore(abstract_state))
    except Exception as e:  # pylint: disable=broad-except
      # tensorstore and orbax raise untyped errors for damaged files.
      logging.warning('The checkpoint of step %d in %s cannot be read back '
                      '(%s); trying an older one.', step, layout.directory,
                      _first_line(e))
      failed.append((step, e))
      continue
    if failed:
      _move_aside(manager, layout, [s for s, _ in failed])
    logging.info('Resuming from the checkpoint of step %d.', step)
    return state
  reasons = '; '.join(f'step {s}: {_first_line(e)}' for s, e in failed)
  folders = ', '.join(os.path.basename(layout.step_path(s)) for s, _ in failed)
  raise NoRestorableCheckpointError(
      f'No checkpoint in {layout.directory} can be restored ({reasons}). If '
      'the config changed since they were written, rerun with the config '
      'they were written with, or use another workdir; to start over, move '
      f'{folders} aside. Nothing was moved or deleted.')


def _reason(error: BaseException) -> str:
  """'the disk is full' and the like, else the error's first line."""
  seen = error
  while seen is not None:
    code = getattr(seen, 'errno', None)
    match = _OS_ERROR_CODE.search(str(seen))
    for candidate in (code, int(match.group(1)) if match else None):
      if candidate in _REASONS:
        return f'{_REASONS[candidate]} ({_first_line(seen, 120)})'
    seen = seen.__cause__ or seen.__context__
  return _first_line(error)


def _folder_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(path) for name in names)


def _megabytes(num_bytes: float) -> str:
  return f'{num_bytes / 2**20:,.1f} MiB'


def save_failure_message(layout: Layout, state: Any,
                         error: BaseException) -> str:
  """Where and why a save failed, the space a checkpoint needs, what is kept."""
  directory = layout.directory
  steps = layout.finished_steps()
  if steps:  # orbax compresses: the last checkpoint's size is the measure.
    needed = _folder_bytes(layout.step_path(steps[-1]))
    kept = f'The checkpoint of step {steps[-1]} is intact'
  else:
    needed = sum(np.dtype(x.dtype).itemsize * x.size
                 for x in jax.tree.leaves(state))
    kept = 'No earlier checkpoint exists'
  free = shutil.disk_usage(directory).free
  return (f'Saving a checkpoint in {directory} failed: {_reason(error)}. One '
          f'checkpoint needs about {_megabytes(needed)} there; '
          f'{_megabytes(free)} are free. {kept}: make room (or move the '
          'workdir), then rerun the same command to resume from it.')


@contextlib.contextmanager
def explain_failed_save(layout: Layout,
                        state: Optional[Any]) -> Iterator[None]:
  """Turns any error of a (possibly earlier, asynchronous) save into one that
  says where, why and how much space is needed."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointSaveError(save_failure_message(layout, state, e)) from e
