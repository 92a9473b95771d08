"""Metric outputs of a run: metrics.jsonl and TensorBoard events.

TensorBoard events are written with tensorboard's own event-file writer, so
no TensorFlow is needed on accelerator hosts. Only process 0 writes. What
the console shows is progress.py's; curves.png is drawn from metrics.jsonl
by plots.py.
"""

import json
import os
import time



class MetricWriter:
  """Appends {'step': ..., **scalars} lines to metrics.jsonl and TB events."""

  def __init__(self, workdir: str, enabled: bool = True):
    self._enabled = enabled
    self._path = os.path.join(workdir, 'metrics.jsonl')
    self._events = None
    if enabled:
      from tensorboard.summary.writer import event_file_writer  # pylint: disable=g-import-not-at-top
      self._events = event_file_writer.EventFileWriter(workdir)

  def write(self, step: int, scalars: dict[str, float]):
    if not self._enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    with open(self._path, 'a') as f:
      f.write(json.dumps({'step': int(step), **scalars}) + '\n')
    from tensorboard.compat.proto import event_pb2, summary_pb2  # pylint: disable=g-import-not-at-top
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=k, simple_value=v)
        for k, v in scalars.items()])
    self._events.add_event(event_pb2.Event(
        wall_time=time.time(), step=int(step), summary=summary))
    self._events.flush()

  def close(self):
    if self._events is not None:
      self._events.close()
