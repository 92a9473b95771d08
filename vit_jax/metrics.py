"""Metric outputs of a run: metrics.jsonl and TensorBoard events.

TensorBoard events are TFRecord files of `Event` protos. They are written
with tensorboard's own record framing (`RecordWriter`) and protos into a
plain file: tensorboard's `EventFileWriter` would open its file through
`tf.io.gfile` and so import TensorFlow (seconds at every start) just to
write a few scalars. Only process 0 writes. What the console shows is
progress.py's; curves.png is drawn from metrics.jsonl by plots.py.
"""

import json
import os
import socket
import time

EVENTS_PREFIX = 'events.out.tfevents'


class MetricWriter:
  """Appends {'step': ..., **scalars} lines to metrics.jsonl and TB events."""

  def __init__(self, workdir: str, enabled: bool = True):
    self._enabled = enabled
    self._path = os.path.join(workdir, 'metrics.jsonl')
    self._events = None
    if enabled:
      self._events = _open_event_file(workdir)

  def write(self, step: int, scalars: dict[str, float]):
    if not self._enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    with open(self._path, 'a') as f:
      f.write(json.dumps({'step': int(step), **scalars}) + '\n')
    from tensorboard.compat.proto import summary_pb2  # pylint: disable=g-import-not-at-top
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=k, simple_value=v)
        for k, v in scalars.items()])
    _write_event(self._events, step=int(step), summary=summary)

  def close(self):
    if self._events is not None:
      self._events.close()


def _open_event_file(workdir: str):
  """A new events file, named as TensorBoard expects, with its version
  record first."""
  from tensorboard.summary.writer import record_writer  # pylint: disable=g-import-not-at-top
  name = (f'{EVENTS_PREFIX}.{int(time.time()):010d}.{socket.gethostname()}'
          f'.{os.getpid()}')
  events = record_writer.RecordWriter(open(os.path.join(workdir, name), 'ab'))
  _write_event(events, file_version='brain.Event:2')
  return events


def _write_event(events, **fields):
  from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
  event = event_pb2.Event(wall_time=time.time(), **fields)
  events.write(event.SerializeToString())
  events.flush()
