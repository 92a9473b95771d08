"""Doing a start-up job (fetch weights, prepare a dataset) once per cluster.

Every process of a multi-host job needs the same file, but N processes
fetching it into one shared folder do the work N times, and into one file
(see hub.py for why that no longer corrupts it). Here process 0 does the job
while the others wait; then each host that still cannot see the result (the
folder is local to each host) lets its first process do it, once for that
host; then every process runs the job itself, which finds the result in
place and returns at once.
"""

import socket
import zlib
from typing import Callable, TypeVar

import jax
from jax.experimental import multihost_utils
import numpy as np

from vit_jax import hub

T = TypeVar('T')


class PeerFailedError(RuntimeError):
  """The process doing the job for this one failed; its log says why."""


def once_per_cluster(job: Callable[[], T], done_here: Callable[[], bool],
                     what: str) -> T:
  """Runs `job` on the fewest processes, then returns `job()` everywhere.

  `job` must be idempotent and cheap once its result exists (e.g. hub.fetch
  returns an existing file without a request). `done_here` says whether this
  process sees the result. `what` names the job in errors.
  """
  if jax.process_count() == 1:
    return job()
  me = jax.process_index()
  _run_on(job, me == 0, what)
  hosts = multihost_utils.process_allgather(
      np.array([_host_id(), not done_here()], np.int64))
  _run_on(job, me in host_leaders(hosts[:, 0], hosts[:, 1].astype(bool)),
          what)
  return job()


def fetch_pretrained(name: str, pretrained_dir: str) -> str:
  """hub.fetch, downloading once per cluster (or per host, if host-local).

  The path is `{pretrained_dir}/{name}.npz` for bucket files and files put
  there by hand, the Hugging Face cache's file for Hub sources.
  """
  return once_per_cluster(
      lambda: hub.fetch(name, pretrained_dir),
      lambda: hub.find_local(name, pretrained_dir) is not None,
      f'get the pretrained weights of {name}')


def host_leaders(host_ids: np.ndarray, missing: np.ndarray) -> set[int]:
  """Process indices that do the job: the first missing one of each host."""
  leaders = {}
  for process, (host, lacks) in enumerate(zip(host_ids.tolist(),
                                              missing.tolist())):
    if lacks:
      leaders.setdefault(host, process)
  return set(leaders.values())


def _run_on(job: Callable[[], T], selected: bool, what: str) -> None:
  """`job()` where selected; all processes then learn who failed.

  The gather is also the barrier: nobody reads before the writers finish.
  A failure is raised on every process, so none waits forever.
  """
  error = None
  if selected:
    try:
      job()
    except Exception as e:  # pylint: disable=broad-except
      error = e  # Raised below, after the others have been told.
  failed = multihost_utils.process_allgather(np.int32(error is not None))
  if error is not None:
    raise error
  if failed.any():
    processes = ', '.join(str(i) for i in np.flatnonzero(failed))
    raise PeerFailedError(
        f'Could not {what}: process {processes} failed doing it for this '
        'one; its log has the reason.')


def _host_id() -> int:
  """Same number for processes on one machine (a hash of its host name)."""
  return zlib.crc32(socket.gethostname().encode()) & 0x7FFFFFFF
