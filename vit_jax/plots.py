"""Training curves of a run: workdir/metrics.jsonl -> workdir/curves.png.

Loss, learning rate and test accuracy, against step (top row) and against
training time (bottom row). Drawn with matplotlib's Agg canvas on a Figure
of its own: no pyplot, no global backend switch, safe in any process.
"""

import json
import os
from typing import Iterable, Optional

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

FILENAME = 'curves.png'
METRICS = 'metrics.jsonl'  # Written by metrics.MetricWriter.
_PANELS = (('Loss', ('train_loss', 'loss_test')),
           ('Learning rate', ('learning_rate',)),
           ('Test accuracy (%)', ('accuracy_test',)))
_LABELS = {'train_loss': 'train', 'loss_test': 'test',
           'learning_rate': 'learning rate', 'accuracy_test': 'test'}


def read_metrics(path: str) -> list[dict[str, float]]:
  """The records of metrics.jsonl; a line cut short by a kill is skipped."""
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return records


def series(records: Iterable[dict[str, float]]) -> dict[str, dict[int, tuple]]:
  """{metric: {step: (minutes, value)}}, the last record of a step winning.

  A resumed run repeats the steps after its last checkpoint and restarts
  its clock (train_seconds): time continues from where the killed run's
  records ended.
  """
  out, offset, last = {}, 0.0, 0.0
  for record in records:
    seconds = record.get('train_seconds')
    if seconds is not None:
      if seconds < last:
        offset += last
      last = seconds
    minutes = (offset + last) / 60
    for key, value in record.items():
      if key not in ('step', 'train_seconds'):
        out.setdefault(key, {})[int(record['step'])] = (minutes, value)
  return out


def plot_curves(records: Iterable[dict[str, float]], path: str,
                title: str = '') -> None:
  """Draws the curves of `records` (metrics.jsonl lines) into a PNG."""
  data = series(records)
  figure = Figure(figsize=(13, 7), dpi=90, layout='constrained')
  axes = figure.subplots(2, len(_PANELS), squeeze=False)
  for column, (name, keys) in enumerate(_PANELS):
    for row, x_label in enumerate(('step', 'training time (minutes)')):
      _draw_panel(axes[row][column], data, keys, row, name, x_label)
  if title:
    figure.suptitle(title)
  FigureCanvasAgg(figure)
  temporary = path + '.tmp'
  figure.savefig(temporary, format='png')
  os.replace(temporary, path)  # A viewer never sees half a file.


def _draw_panel(ax, data, keys, row: int, name: str, x_label: str):
  scale = 100 if name.startswith('Test accuracy') else 1
  for key in keys:
    points = sorted(data.get(key, {}).items())
    if not points:
      continue
    x = [step if row == 0 else minutes for step, (minutes, _) in points]
    y = [value * scale for _, (_, value) in points]
    label = _LABELS[key]
    if key == 'accuracy_test':
      best = max(range(len(points)), key=y.__getitem__)
      label = (f'last {y[-1]:.1f}%, best {y[best]:.1f}% (step '
               f'{points[best][0]})')
    marker = 'o' if key.endswith('_test') else None
    ax.plot(x, y, marker=marker, markersize=4, label=label)
  ax.set_title(name)
  ax.set_xlabel(x_label)
  ax.grid(alpha=0.3)
  if ax.get_lines() and name != 'Learning rate':
    ax.legend()


def write_curves(workdir: str, title: Optional[str] = None) -> Optional[str]:
  """workdir/curves.png from workdir/metrics.jsonl; its path, or None when
  the run has no metrics yet."""
  metrics_path = os.path.join(workdir, METRICS)
  if not os.path.exists(metrics_path):
    return None
  records = read_metrics(metrics_path)
  if not records:
    return None
  path = os.path.join(workdir, FILENAME)
  plot_curves(records, path, os.path.basename(os.path.abspath(workdir))
              if title is None else title)
  return path
