"""Classify your own images with a trained model: top-k names and probabilities.

  python -m vit_jax.predict --workdir runs/scratch cat.jpg dog.png
  python -m vit_jax.predict --checkpoint ViT-B_16_cifar10.npz --labels names.txt x.jpg

`--workdir` is a finished run of `vit_jax.main` (model.npz + run.json: model,
image size and class names as trained); `--checkpoint` a parameter file in any layout
`checkpoint.load` reads; for a bare file the architecture, number of classes
and image size are read off the arrays (`--model_name` checks them against
the size table). The loading and prediction are `vit_jax.inference`'s.
"""

import argparse
import json
import sys
from typing import Optional, Sequence

from vit_jax import checkpoint
from vit_jax import cli
from vit_jax import image_io
from vit_jax import inference
from vit_jax import preemption


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = cli.Parser('python -m vit_jax.predict', __doc__.split('\n')[0])
  parser.add_argument('images', nargs='+', metavar='IMAGE',
                      help='image files (JPEG, PNG, ...; any size)')
  parser.add_trained_model()
  parser.add_argument('--top_k', type=int, default=5)
  parser.add_argument('--json', action='store_true',
                      help='print one JSON object per image instead')
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(argv)
  try:
    trained = inference.load_from_args(args)
    results = inference.predict_files(trained, args.images,
                                      min(args.top_k, trained.num_classes))
  except (image_io.ImageError, checkpoint.CheckpointError, FileNotFoundError,
          ValueError) as e:
    print(f'Error: {e}', file=sys.stderr)
    return 1
  for path, result in zip(args.images, results):
    if args.json:
      print(json.dumps({'image': path, 'top_k': [
          {'class': name, 'probability': p} for name, p in result]}))
    else:
      print(path)
      for rank, (name, p) in enumerate(result, 1):
        print(f'  {rank}. {name:<20s} {p:.4f}')
  return 0


if __name__ == '__main__':
  sys.exit(preemption.exit_on_ctrl_c(main, 'nothing was written.'))
