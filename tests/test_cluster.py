"""Start-up jobs once per cluster: two JAX processes on 127.0.0.1.

Both processes fetch pretrained weights from an HTTP server on 127.0.0.1 (the
bucket URL points at it) through `cluster.fetch_pretrained`, as train.py
does; the server counts the downloads.
"""

import http.server
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from tests.conftest import REPO
from tests.conftest import free_port
from tests.conftest import local_http_server
from vit_jax import cluster

_HOLD_SECONDS = 3.0  # Longer than both processes take to reach the fetch.
_WORKER = """
import sys
import jax
from vit_jax import cluster
address, process_id, pretrained_dir = sys.argv[1:]
jax.distributed.initialize(address, 2, int(process_id))
print(cluster.fetch_pretrained('ViT-B_16', pretrained_dir))
"""


class _CountingHandler(http.server.BaseHTTPRequestHandler):
  """Counts GETs; holds the first answer a while so that a second process
  fetching at the same time (the bug) is seen asking too."""

  def do_GET(self):  # pylint: disable=invalid-name
    self.server.gets.append(self.path)
    if len(self.server.gets) > 1:
      self.server.second_request.set()
    self.server.second_request.wait(timeout=_HOLD_SECONDS)
    if self.path != '/imagenet21k/ViT-B_16.npz':
      self.send_response(404)
      self.send_header('Content-Length', '0')
      self.end_headers()
      return
    self.send_response(200)
    self.send_header('Content-Length', str(len(self.server.body)))
    self.end_headers()
    self.wfile.write(self.server.body)

  def log_message(self, *args):
    pass


@pytest.fixture(name='bucket')
def fixture_bucket(tmp_path):
  """A bucket on 127.0.0.1 holding a (tiny, valid) ViT-B_16.npz."""
  np.savez(tmp_path / 'weights.npz', x=np.arange(1000, dtype=np.float32))
  with local_http_server(_CountingHandler) as server:
    server.body = (tmp_path / 'weights.npz').read_bytes()
    server.gets, server.second_request = [], threading.Event()
    yield server


def _run_two(bucket, dirs):
  """Runs the two processes; dirs[i] is process i's pretrained_dir."""
  address = f'127.0.0.1:{free_port()}'
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo',
             VIT_JAX_BUCKET_URL=f'http://127.0.0.1:{bucket.server_port}',
             PYTHONPATH=REPO)
  processes = [subprocess.Popen(
      [sys.executable, '-c', _WORKER, address, str(i), str(dirs[i])],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True) for i in range(2)]
  outputs = []
  try:
    for process in processes:
      output, _ = process.communicate(timeout=300)
      assert process.returncode == 0, output
      outputs.append(output.strip().splitlines()[-1])
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  return outputs


def test_shared_folder_is_fetched_once_for_both_processes(bucket, tmp_path):
  shared = tmp_path / 'shared'
  paths = _run_two(bucket, [shared, shared])
  assert paths == [str(shared / 'ViT-B_16.npz')] * 2
  assert bucket.gets == ['/imagenet21k/ViT-B_16.npz']  # One download.
  assert (shared / 'ViT-B_16.npz').read_bytes() == bucket.body
  assert os.listdir(shared) == ['ViT-B_16.npz']


def test_folder_process_0_cannot_see_is_fetched_by_that_process(bucket,
                                                                tmp_path):
  # As when pretrained_dir is local to each host: process 1 does not see
  # what process 0 wrote, so it fetches its own copy, once.
  dirs = [tmp_path / 'host0', tmp_path / 'host1']
  paths = _run_two(bucket, dirs)
  assert paths == [str(d / 'ViT-B_16.npz') for d in dirs]
  assert bucket.gets == ['/imagenet21k/ViT-B_16.npz'] * 2
  for folder in dirs:
    assert (folder / 'ViT-B_16.npz').read_bytes() == bucket.body


def test_the_first_process_lacking_the_result_on_each_host_does_the_job():
  hosts = np.array([7, 7, 9, 9, 9, 4])
  missing = np.array([False, True, False, True, True, False])
  assert cluster.host_leaders(hosts, missing) == {1, 3}
  assert cluster.host_leaders(hosts, np.zeros(6, bool)) == set()
