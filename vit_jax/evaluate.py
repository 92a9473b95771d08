"""How good is a trained model: accuracy, loss, per-class accuracy, confusion.

  python -m vit_jax.evaluate --workdir runs/scratch
  python -m vit_jax.evaluate --checkpoint ViT-B_16_cifar10.npz --dataset cifar10 \
      --tfds_data_dir ~/tensorflow_datasets --split test

Every example of the split is seen exactly once (the last batch is padded and
masked, as during training: both run `inference.evaluate`), on all devices
of all processes. Writes `eval_<split>.json` (summary, per-class accuracy and
the confusion matrix) and `confusion_<split>.png` into --out (default:
WORKDIR/eval, or ./eval for a bare file). With a workdir the dataset, data
dir and split default to the run's (run.json); flags override them. With
--workdir it also redraws WORKDIR/curves.png from the run's metrics.jsonl
(for runs older than the plot).
"""

import argparse
import sys
from typing import Optional, Sequence

import jax

from vit_jax import checkpoint
from vit_jax import cli
from vit_jax import inference
from vit_jax import input_pipeline
from vit_jax import plots
from vit_jax import preemption
from vit_jax import reports


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = cli.Parser('python -m vit_jax.evaluate', __doc__.split('\n')[0])
  parser.add_model_source()
  parser.add_shared('model_name', help='for --checkpoint: check it is this '
                    'size')
  parser.add_shared('dataset', help='TFDS name or image folder (default: '
                    'the run\'s)')
  parser.add_shared('tfds_data_dir', help='default: the run\'s, else '
                    '$TFDS_DATA_DIR')
  parser.add_argument('--split', default=None,
                      help='TFDS slice syntax, e.g. test or test[:500] '
                           '(default: the run\'s eval split, else test)')
  parser.add_argument('--source_size', '--config.pp.source_size', type=int,
                      default=None, help='resize images to NxN when loading '
                      '(datasets of mixed sizes)')
  parser.add_shared('batch', default=256, help='global evaluation batch')
  parser.add_argument('--out', default=None,
                      help='output folder (default WORKDIR/eval or ./eval)')
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(argv)
  try:
    if args.workdir:
      inference.require_workdir(args.workdir)
    summary = reports.evaluate_checkpoint(
        args.workdir or args.checkpoint, model_name=args.model_name,
        dataset=args.dataset, tfds_data_dir=args.tfds_data_dir,
        split=args.split, source_size=args.source_size, batch=args.batch,
        out=args.out)
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
    curves = args.workdir and plots.write_curves(args.workdir)
    if curves:
      print(f'Wrote {curves}')
  return 0


if __name__ == '__main__':
  sys.exit(preemption.exit_on_ctrl_c(main, 'no output is left half-written.'))
