"""A TFDS dataset that is not prepared is downloaded and prepared on first use.

No internet: an HTTP server on 127.0.0.1 serves a tiny archive with the
layout of CIFAR-10's real download (cifar-10-binary.tar.gz:
cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin + batches.meta.txt),
and a dataset that is TFDS's own CIFAR-10 builder with only the URL changed
reads it. Everything else (download manager, extraction, the builder's parsing,
writing the prepared files) is the code a real first run uses.
"""

import hashlib
import http.server
import io
import os
import tarfile

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download.checksums import UrlInfo

from tests.conftest import local_http_server
from vit_jax import input_pipeline

_TRAIN_PER_BATCH = 2  # 5 batches: 10 training images.
_TEST_IMAGES = 3
_LABELS = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
           'horse', 'ship', 'truck')


class Cifar10OnLocalhost(tfds.image_classification.Cifar10):
  """TFDS's CIFAR-10 builder, downloading from `URL` instead."""

  URL = ''  # Set by the fixture to the local server's address.
  url_infos = {}  # Its checksum, as tfds registers the real one's.

  @property
  def _cifar_info(self):
    info = super()._cifar_info
    return info._replace(url=self.URL)


def _records(rng, count):
  """`count` CIFAR binary records (label byte + 3072 CHW bytes) and labels."""
  labels = rng.integers(0, 10, count, dtype=np.uint8)
  images = rng.integers(0, 256, (count, 3, 32, 32), dtype=np.uint8)
  data = b''.join(bytes([label]) + image.tobytes()
                  for label, image in zip(labels, images))
  return data, labels, images.transpose(0, 2, 3, 1)


def _archive():
  """(tar.gz bytes, train labels, train images HWC, test labels)."""
  rng = np.random.default_rng(0)
  files, train_labels, train_images = {}, [], []
  for i in range(1, 6):
    data, labels, images = _records(rng, _TRAIN_PER_BATCH)
    files[f'data_batch_{i}.bin'] = data
    train_labels.append(labels)
    train_images.append(images)
  files['test_batch.bin'], test_labels, _ = _records(rng, _TEST_IMAGES)
  files['batches.meta.txt'] = '\n'.join(_LABELS).encode() + b'\n\n'
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode='w:gz') as tar:
    for name, data in files.items():
      member = tarfile.TarInfo(f'cifar-10-batches-bin/{name}')
      member.size = len(data)
      tar.addfile(member, io.BytesIO(data))
  return (buffer.getvalue(), np.concatenate(train_labels),
          np.concatenate(train_images), test_labels)


class _ArchiveHandler(http.server.BaseHTTPRequestHandler):
  """Serves the archive; `server.cut_at` sends only that many bytes."""

  def do_GET(self):  # pylint: disable=invalid-name
    self.server.gets += 1
    body = self.server.archive
    self.send_response(200)
    self.send_header('Content-Length', str(len(body)))
    self.end_headers()
    self.wfile.write(body[:self.server.cut_at])
    self.close_connection = True

  def log_message(self, *args):
    pass


@pytest.fixture(name='server')
def fixture_server():
  archive, train_labels, train_images, test_labels = _archive()
  with local_http_server(_ArchiveHandler) as server:
    server.archive, server.cut_at, server.gets = archive, None, 0
    server.expected = (train_labels, train_images, test_labels)
    Cifar10OnLocalhost.URL = f'{server.url}/cifar-10-binary.tar.gz'
    Cifar10OnLocalhost.url_infos = {Cifar10OnLocalhost.URL: UrlInfo(
        size=len(archive), checksum=hashlib.sha256(archive).hexdigest(),
        filename='cifar-10-binary.tar.gz')}
    yield server


def _config(data_dir, download=True):
  return ml_collections.ConfigDict({
      'dataset': 'cifar10_on_localhost', 'tfds_data_dir': str(data_dir),
      'tfds_download': download, 'seed': 0,
      'pp': {'train': 'train', 'test': 'test', 'source_size': None}})


def _examples(images, labels):
  """(label, pixels) rows in a fixed order: TFDS stores examples shuffled."""
  rows = np.concatenate([np.asarray(labels, np.int64)[:, None],
                         images.reshape(len(images), -1)], axis=1)
  return rows[np.lexsort(rows.T[::-1])]


def _files(root):
  """Files (not folders) under root: what a failed run must not leave."""
  return [name for name in _tree(root)
          if os.path.isfile(os.path.join(root, name))]


def _tree(root):
  """Every path under root, relative (to compare before/after)."""
  return sorted(os.path.relpath(os.path.join(folder, name), root)
                for folder, dirs, files in os.walk(root)
                for name in dirs + files)


def test_first_use_downloads_and_prepares_then_reuses(server, tmp_path):
  train_labels, train_images, test_labels = server.expected
  images, labels, info = input_pipeline.load_split(_config(tmp_path), 'train')
  assert server.gets == 1
  np.testing.assert_array_equal(_examples(images, labels),
                                _examples(train_images, train_labels))
  assert info.class_names == _LABELS and info.num_examples == 10
  assert os.path.isdir(tmp_path / 'cifar10_on_localhost' / '3.0.2')
  _, labels, _ = input_pipeline.load_split(_config(tmp_path), 'test')
  np.testing.assert_array_equal(np.sort(labels), np.sort(test_labels))
  assert server.gets == 1  # Prepared once, then read.


def test_offline_stops_with_one_message_and_writes_nothing(tmp_path):
  with socket_closed_url() as url:
    Cifar10OnLocalhost.URL = url
    Cifar10OnLocalhost.url_infos = {url: UrlInfo(
        size=1, checksum='0' * 64, filename='cifar-10-binary.tar.gz')}
    with pytest.raises(input_pipeline.DataError) as error:
      input_pipeline.load_split(_config(tmp_path), 'train')
  message = str(error.value)
  assert url in message and str(tmp_path) in message
  assert '--config.tfds_data_dir' in message and 'tfds build' in message
  assert error.value.__suppress_context__  # No chained traceback.
  assert _files(tmp_path) == []


def test_interrupted_download_leaves_nothing_and_next_run_works(server,
                                                                 tmp_path):
  server.cut_at = len(server.archive) // 2
  with pytest.raises(input_pipeline.DataError, match='cifar-10-binary'):
    input_pipeline.load_split(_config(tmp_path), 'train')
  assert _files(tmp_path) == []
  server.cut_at = None
  _, labels, _ = input_pipeline.load_split(_config(tmp_path), 'train')
  np.testing.assert_array_equal(np.sort(labels), np.sort(server.expected[0]))


def test_download_off_stops_without_a_request(server, tmp_path):
  with pytest.raises(input_pipeline.DataError,
                     match=r'Downloading is off \(--config.tfds_download'
                     ) as error:
    input_pipeline.load_split(_config(tmp_path, download=False), 'train')
  assert server.gets == 0 and _tree(tmp_path) == []
  assert 'tfds build cifar10_on_localhost' in str(error.value)


class socket_closed_url:  # pylint: disable=invalid-name
  """A URL on a port nothing listens on: what being offline looks like."""

  def __enter__(self):
    import socket  # pylint: disable=g-import-not-at-top
    with socket.socket() as s:
      s.bind(('127.0.0.1', 0))
      port = s.getsockname()[1]
    return f'http://127.0.0.1:{port}/cifar-10-binary.tar.gz'

  def __exit__(self, *exc):
    return False
