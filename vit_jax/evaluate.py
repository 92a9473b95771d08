"""How good is a trained model: accuracy, loss, per-class accuracy, confusion.

  python -m vit_jax.evaluate --workdir runs/scratch
  python -m vit_jax.evaluate --checkpoint ViT-B_16_cifar10.npz --dataset cifar10 \
      --tfds_data_dir ~/tensorflow_datasets --split test

Every example of the split is seen exactly once (the last batch is padded and
masked, as during training: this reuses `train.evaluate`), on all devices of
all processes. Writes `eval_<split>.json` (summary, per-class accuracy and
the confusion matrix) and `confusion_<split>.png` into --out (default:
WORKDIR/eval, or ./eval for a bare file). With a workdir the dataset, data
dir and split default to the run's (run.json); flags override them.
"""

import argparse
import json
import os
import re
import sys
from typing import Any, Optional, Sequence

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from configs import common
from vit_jax import checkpoint
from vit_jax import input_pipeline
from vit_jax import predict
from vit_jax import train


def data_config(trained: predict.TrainedModel, dataset: Optional[str],
                tfds_data_dir: Optional[str], source_size: Optional[int],
                batch: int):
  """The config keys that input_pipeline and the eval step read."""
  run = trained.run
  config = common.get_config()
  config.dataset = dataset or run.get('dataset')
  if not config.dataset:
    raise ValueError('No dataset: pass --dataset (a TFDS name or an image '
                     'folder) when evaluating a bare parameter file.')
  config.tfds_data_dir = tfds_data_dir or run.get('tfds_data_dir')
  config.pp.source_size = source_size or run.get('source_size')
  config.pp.crop = trained.image_size
  devices = jax.device_count()
  config.batch_eval = -(-batch // devices) * devices  # A multiple of devices.
  return config


def evaluate_model(trained: predict.TrainedModel, config,
                   split: str) -> dict[str, Any]:
  """Runs the whole split once; returns the summary (see `summarize`)."""
  images, labels, info = input_pipeline.load_split(config, split)
  if info.num_classes != trained.num_classes:
    raise checkpoint.CheckpointError(
        f'{trained.path} has {trained.num_classes} classes but dataset '
        f'{config.dataset!r} has {info.num_classes}; evaluate it on the '
        'dataset it was trained on.')
  mesh = train.make_mesh()
  replicated = NamedSharding(mesh, P())
  params = jax.tree.map(lambda x: train.to_global(np.asarray(x), replicated),
                        trained.params)
  source = train.BatchSource(train.Split(images, labels, info), mesh,
                             on_device=False)
  eval_step = train.make_eval_step(trained.model, config)
  result = train.evaluate(eval_step, params, source, info.num_examples,
                          config.batch_eval)
  # A bare file knows no class names; the dataset does.
  names = trained.class_names if trained.run else info.class_names
  return summarize(result, labels, names)


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
  with open(json_path, 'w') as f:
    json.dump(summary, f, indent=2)
  plot_confusion(summary, png_path, title)
  return json_path, png_path


def run(checkpoint_path: str, *, model_name: Optional[str] = None,
        dataset: Optional[str] = None, tfds_data_dir: Optional[str] = None,
        split: Optional[str] = None, source_size: Optional[int] = None,
        batch: int = 256, out: Optional[str] = None) -> dict[str, Any]:
  """Loads, evaluates and (on process 0) writes the outputs; returns summary."""
  trained = predict.load_model(checkpoint_path, model_name)
  config = data_config(trained, dataset, tfds_data_dir, source_size, batch)
  split = split or trained.run.get('split_test') or 'test'
  summary = evaluate_model(trained, config, split)
  summary.update(checkpoint=trained.path, dataset=config.dataset, split=split)
  if out is None:
    out = (os.path.join(checkpoint_path, 'eval')
           if os.path.isdir(checkpoint_path) else 'eval')
  if jax.process_index() == 0:
    summary['outputs'] = write_outputs(
        summary, out, split, f'{os.path.basename(trained.path)} on '
        f'{config.dataset} {split}: accuracy {summary["accuracy"]:.4f}')
  return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m vit_jax.evaluate', description=__doc__.split('\n')[0])
  which = parser.add_mutually_exclusive_group(required=True)
  which.add_argument('--workdir', help='a finished vit_jax.main run')
  which.add_argument('--checkpoint', help='a parameter file (any layout)')
  parser.add_argument('--model_name', default=None,
                      help='for --checkpoint: check it is this size')
  parser.add_argument('--dataset', default=None,
                      help='TFDS name or image folder (default: the run\'s)')
  parser.add_argument('--tfds_data_dir', default=None,
                      help='default: the run\'s, else $TFDS_DATA_DIR')
  parser.add_argument('--split', default=None,
                      help='TFDS slice syntax, e.g. test or test[:500] '
                           '(default: the run\'s eval split, else test)')
  parser.add_argument('--source_size', type=int, default=None,
                      help='resize images to NxN when loading (datasets of '
                           'mixed sizes)')
  parser.add_argument('--batch', type=int, default=256,
                      help='global evaluation batch')
  parser.add_argument('--out', default=None,
                      help='output folder (default WORKDIR/eval or ./eval)')
  args = parser.parse_args(argv)
  try:
    summary = run(args.workdir or args.checkpoint, model_name=args.model_name,
                  dataset=args.dataset, tfds_data_dir=args.tfds_data_dir,
                  split=args.split, source_size=args.source_size,
                  batch=args.batch, out=args.out)
  except (checkpoint.CheckpointError, input_pipeline.DataError,
          FileNotFoundError, ValueError) as e:
    print(f'Error: {e}', file=sys.stderr)
    return 1
  if jax.process_index() == 0:
    print(f'{summary["dataset"]} {summary["split"]}: '
          f'{summary["num_examples"]} examples, accuracy '
          f'{summary["accuracy"]:.4f}, loss {summary["loss"]:.4f}')
    width = max(len(n) for n in summary['class_names'])
    for name, accuracy in summary['per_class_accuracy'].items():
      shown = 'n/a' if accuracy is None else f'{accuracy:.4f}'
      print(f'  {name:<{width}s} {shown}')
    print('Wrote ' + ' and '.join(summary['outputs']))
  return 0


if __name__ == '__main__':
  sys.exit(main())
