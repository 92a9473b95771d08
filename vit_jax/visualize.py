"""Where the model looks: attention rollout and last-layer CLS attention.

  python -m vit_jax.visualize --workdir runs/scratch cat.jpg --out cat_attention.png

Writes one PNG: the image, its attention rollout and the last layer's
attention, as computed and explained in `vit_jax/explain.py`.
"""

import argparse
import sys
from typing import Optional, Sequence

from vit_jax import checkpoint
from vit_jax import cli
from vit_jax import explain
from vit_jax import image_io
from vit_jax import inference


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = cli.Parser('python -m vit_jax.visualize', __doc__.split('\n')[0])
  parser.add_argument('image', metavar='IMAGE', help='an image file')
  parser.add_trained_model()
  parser.add_argument('--out', required=True, help='PNG file to write')
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(argv)
  try:
    trained = inference.load_from_args(args)
    explain.visualize_file(trained, args.image, args.out)
  except (image_io.ImageError, checkpoint.CheckpointError, FileNotFoundError,
          ValueError) as e:
    print(f'Error: {e}', file=sys.stderr)
    return 1
  print(f'Wrote {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
