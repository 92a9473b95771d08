"""Metric outputs of a run: metrics.jsonl, TensorBoard events, console.

TensorBoard events are written with tensorboard's own event-file writer, so
no TensorFlow is needed on accelerator hosts. Only process 0 writes.
"""

import json
import os
import time

from absl import logging


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


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{seconds:02d}s'


class Progress:
  """A console line with rate and ETA every `progress_every` steps."""

  def __init__(self, start_step: int, total_steps: int):
    self._total = total_steps
    self._start_step = start_step
    self._start_time = None

  def start(self, step: int):
    """Called after the first (compiling) step so the ETA excludes it."""
    self._start_step, self._start_time = step, time.monotonic()

  def line(self, step: int, scalars: dict[str, float]) -> str:
    parts = [f'step {step}/{self._total}']
    parts += [f'{k} {v:.4g}' for k, v in scalars.items()]
    if self._start_time is not None and step > self._start_step:
      elapsed = time.monotonic() - self._start_time
      per_step = elapsed / (step - self._start_step)
      parts.append(f'ETA {format_duration(per_step * (self._total - step))}')
    return ' | '.join(parts)

  def log(self, step: int, scalars: dict[str, float]):
    logging.info('%s', self.line(step, scalars))
