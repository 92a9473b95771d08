"""What a trained model scores on a split: summary, confusion matrix, files.

`evaluate_checkpoint` is `python -m vit_jax.evaluate` as a function: it loads
a workdir or parameter file, runs every example of the split once
(`inference.evaluate_split`) and writes `eval_<split>.json` (summary,
per-class accuracy and the confusion matrix) and `confusion_<split>.png`.
"""

import contextlib
import json
import os
import re
from typing import Any, Iterator, Optional, Sequence

import jax
import numpy as np

from vit_jax import inference


def evaluate_checkpoint(
    checkpoint_path: str, *, model_name: Optional[str] = None,
    dataset: Optional[str] = None, tfds_data_dir: Optional[str] = None,
    split: Optional[str] = None, source_size: Optional[int] = None,
    batch: int = 256, out: Optional[str] = None) -> dict[str, Any]:
  """Loads, evaluates and (on process 0) writes the outputs; returns summary."""
  trained = inference.load_model(checkpoint_path, model_name)
  config = inference.data_config(trained, dataset, tfds_data_dir,
                                 source_size, batch)
  split = split or (trained.run and trained.run.split_test) or 'test'
  summary = summarize(*inference.evaluate_split(trained, config, split))
  summary.update(checkpoint=trained.path, dataset=config.dataset, split=split)
  if out is None:
    out = (os.path.join(checkpoint_path, 'eval')
           if os.path.isdir(checkpoint_path) else 'eval')
  if jax.process_index() == 0:
    summary['outputs'] = write_outputs(
        summary, out, split, f'{os.path.basename(trained.path)} on '
        f'{config.dataset} {split}: accuracy {summary["accuracy"]:.4f}')
  return summary


def summarize(result: dict[str, np.ndarray], labels: np.ndarray,
              class_names: Sequence[str]) -> dict[str, Any]:
  """Accuracy, loss, per-class accuracy and confusion[true][predicted]."""
  num_classes = len(class_names)
  truth = np.asarray(labels)[result['indices']]
  confusion = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(confusion, (truth, result['predictions']), 1)
  support = confusion.sum(1)
  per_class = {
      name: (float(confusion[i, i] / support[i]) if support[i] else None)
      for i, name in enumerate(class_names)}
  return {'num_examples': int(len(truth)),
          'accuracy': float(np.trace(confusion) / len(truth)),
          'loss': float(np.mean(result['losses'])),
          'per_class_accuracy': per_class,
          'class_names': list(class_names),
          'confusion_matrix': confusion.tolist()}


def plot_confusion(summary: dict[str, Any], path: str, title: str = ''):
  """Row-normalised confusion matrix with counts (for up to 30 classes)."""
  # A bare Figure (no pyplot): no global backend switch, safe in notebooks.
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  confusion = np.asarray(summary['confusion_matrix'])
  names = summary['class_names']
  rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
  n = len(names)
  side = min(max(4.0, 0.5 * n + 2), 20.0)
  fig = Figure(figsize=(side + 1.5, side))
  ax = fig.subplots()
  image = ax.imshow(rates, cmap='Blues', vmin=0, vmax=1)
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
               label='fraction of the true class')
  if n <= 30:
    ax.set_xticks(range(n), names, rotation=90)
    ax.set_yticks(range(n), names)
    for i in range(n):
      for j in range(n):
        if confusion[i, j]:
          ax.text(j, i, str(confusion[i, j]), ha='center', va='center',
                  fontsize=7, color='white' if rates[i, j] > 0.5 else 'black')
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  ax.set_title(title or f'accuracy {summary["accuracy"]:.4f} on '
               f'{summary["num_examples"]} examples')
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def split_tag(split: str) -> str:
  """'test[:500]' -> 'test_500': a file-name-safe form of a split."""
  return re.sub(r'[^A-Za-z0-9.%-]+', '_', split).strip('_')


def write_outputs(summary: dict[str, Any], out: str, split: str,
                  title: str = '') -> tuple[str, str]:
  """eval_<split>.json and confusion_<split>.png in `out`."""
  os.makedirs(out, exist_ok=True)
  tag = split_tag(split)
  json_path = os.path.join(out, f'eval_{tag}.json')
  png_path = os.path.join(out, f'confusion_{tag}.png')
  with _complete_or_absent(json_path) as partial, open(partial, 'w') as f:
    json.dump(summary, f, indent=2)
  with _complete_or_absent(png_path) as partial:
    plot_confusion(summary, partial, title)
  return json_path, png_path


@contextlib.contextmanager
def _complete_or_absent(path: str) -> Iterator[str]:
  """Yields a name to write `path`'s content to, renamed to `path` when
  complete: an interrupted write (Ctrl-C) leaves no half-written output."""
  root, ext = os.path.splitext(path)
  partial = f'{root}.partial{ext}'  # The extension tells savefig the format.
  try:
    yield partial
    os.replace(partial, path)
  finally:
    if os.path.exists(partial):
      os.remove(partial)
