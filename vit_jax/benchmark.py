"""Speed of a ViT: img/s, TFLOP/s, MFU, memory and compile time; vs timm.

  python -m vit_jax.benchmark --model_name ViT-B_16 --mode infer --batch 16
  python -m vit_jax.benchmark --model_name ViT-Ti_16 --mode train --batch 32
  /path/to/python-with-timm -m vit_jax.benchmark ... --compare timm

`train` times the real training step (`train.make_train_step`: on-device
preprocessing of uint8 images, forward, backward, gradient clipping, AdamW)
and `infer` the real evaluation step (`inference.make_eval_step`), on random
images held on the device. With `--compare timm` the same architecture runs
in timm (PyTorch; torch.compile and AMP on GPU), alternating with ours round
by round in this process so both see the same machine load; speeds are the
medians over rounds. Prints a table, then one JSON line for scripts. The
measuring is `vit_jax.speed`'s.
"""

import argparse
import json
import os

from vit_jax import attention
from vit_jax import cli
from vit_jax import host_memory
from vit_jax import speed


def parse_args(argv=None) -> argparse.Namespace:
  parser = cli.Parser('python -m vit_jax.benchmark',
                      __doc__.split('\n\n')[0],
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_shared('model_name', default='ViT-B_16',
                    help='e.g. ViT-B_16, ViT-Ti_16, or testing.')
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_shared('batch', default=16, help='Global batch (over all '
                    'devices).')
  parser.add_argument('--dtype', '--config.model.dtype', dest='dtype',
                      choices=('float32', 'bfloat16'),
                      default='float32',
                      help='Compute dtype; parameters stay float32.')
  parser.add_argument('--mode', choices=('train', 'infer'), default='infer')
  parser.add_argument('--steps', type=int, default=5,
                      help='Timed steps per round.')
  parser.add_argument('--warmup', type=int, default=2,
                      help='Untimed steps after compiling.')
  parser.add_argument('--rounds', type=int, default=3,
                      help='Timed rounds (alternating with timm if compared).')
  parser.add_argument('--compare', choices=('none', 'timm'), default='none')
  parser.add_argument('--timm_compile', choices=('auto', 'on', 'off'),
                      default='auto', help='torch.compile timm (auto: on GPU).')
  parser.add_argument('--peak_tflops', type=float, default=None,
                      help='Per-device peak for MFU (default: table).')
  parser.add_argument('--attention_impl', '--config.model.attention_impl',
                      dest='attention_impl', choices=attention.IMPLS,
                      default='auto')
  parser.add_argument('--remat', action='store_true',
                      help='Recompute blocks in the backward pass.')
  parser.add_argument('--fp8', '--config.model.fp8', dest='fp8',
                      action='store_true',
                      help='FP8 q/k/v, out and MLP matmuls (vit_jax/fp8.py).')
  parser.add_argument('--reuse_host_memory',
                      action=argparse.BooleanOptionalAction, default=True,
                      help='CPU: run steps on the main thread and reuse its '
                      'heap, as vit_jax.main does (vit_jax/host_memory.py).')
  parser.add_argument('--json_out', default=None,
                      help='Also append the JSON line to this file.')
  args = parser.parse_args(argv)
  if min(args.steps, args.rounds) < 1 or args.warmup < 0:
    parser.error('--steps and --rounds must be >= 1, --warmup >= 0.')
  return args


def main(argv=None):
  args = parse_args(argv)
  if args.compare == 'timm':
    # Share the GPU with PyTorch: grow JAX's pool instead of taking 75% of
    # the memory up front (read when the backend starts, i.e. below).
    os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  # Before JAX starts its backend, as in vit_jax.main.
  args.reuse_host_memory = host_memory.reuse_freed_memory_on_cpu(
      args.reuse_host_memory)
  report = speed.run(args)
  print(speed.format_table(report))
  line = json.dumps(report)
  print(line)
  if args.json_out:
    with open(args.json_out, 'a') as f:
      f.write(line + '\n')


if __name__ == '__main__':
  # On CPU, huge pages for XLA's scratch memory, as `vit_jax.main` has them.
  host_memory.rerun_with_huge_pages(host_memory.this_process_runs_on_cpu())
  main()
