"""Tests for vit_jax.metrics: metrics.jsonl and TensorBoard events that
TensorBoard's own loader reads, written without importing TensorFlow."""

import json
import os
import subprocess
import sys

from vit_jax import metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_events_read_back_with_tensorboards_loader(tmp_path):
  writer = metrics.MetricWriter(str(tmp_path))
  writer.write(1, {'train_loss': 2.5, 'learning_rate': 1e-3})
  writer.write(7, {'accuracy_test': 0.875})
  writer.close()
  lines = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert lines == [{'step': 1, 'train_loss': 2.5, 'learning_rate': 1e-3},
                   {'step': 7, 'accuracy_test': 0.875}]
  (name,) = [f for f in os.listdir(tmp_path)
             if f.startswith(metrics.EVENTS_PREFIX)]
  from tensorboard.backend.event_processing import event_file_loader  # pylint: disable=g-import-not-at-top
  events = list(event_file_loader.RawEventFileLoader(
      str(tmp_path / name)).Load())
  from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
  events = [event_pb2.Event.FromString(e) for e in events]
  assert events[0].file_version == 'brain.Event:2'
  scalars = [(e.step, v.tag, round(v.simple_value, 6))
             for e in events[1:] for v in e.summary.value]
  assert scalars == [(1, 'train_loss', 2.5), (1, 'learning_rate', 0.001),
                     (7, 'accuracy_test', 0.875)]


def test_disabled_writer_writes_nothing(tmp_path):
  writer = metrics.MetricWriter(str(tmp_path), enabled=False)
  writer.write(1, {'train_loss': 1.0})
  writer.close()
  assert not os.listdir(tmp_path)


def test_writing_events_does_not_import_tensorflow(tmp_path):
  code = ('import sys\n'
          'from vit_jax import metrics\n'
          f'w = metrics.MetricWriter({str(tmp_path)!r})\n'
          'w.write(1, {"x": 1.0}); w.close()\n'
          'assert "tensorflow" not in sys.modules, "tensorflow was imported"\n')
  subprocess.run([sys.executable, '-c', code], check=True, cwd=REPO,
                 timeout=120)
