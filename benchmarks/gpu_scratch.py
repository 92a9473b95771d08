"""From-scratch CIFAR-10 on one GPU within a wall-clock budget.

  python benchmarks/gpu_scratch.py --data /tmp/cifar10 --workdir $OUT/scratch \
      --train_seconds 300

The budget is the library's own (`config.train_minutes`, vit_jax/budget.py):
after compiling, the run measures a step and an evaluation and chooses the
largest total_steps that ends the whole command within the budget (at most
--max_steps), with --evals evaluations spread over it. Its metrics.jsonl
holds accuracy against training seconds (time to 90% / 94% are read from
it); the chosen steps are in WORKDIR/budget.json.
"""

import argparse
import json
import os

from absl import logging

from vit_jax import cli
from vit_jax import train

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(args):
  config = cli.load_config_file(
      os.path.join(_REPO, 'configs', f'cifar10_scratch.py:{args.preset}'))
  with config.unlocked():
    config.dataset = args.data
    config.train_minutes = args.train_seconds / 60
    config.total_steps = args.max_steps
    config.eval_count = args.evals
    config.update_from_flattened_dict(
        dict(_parse(override) for override in args.set or []))
  return config


def _parse(override: str):
  """'aug.mixup_alpha=0.2' -> ('aug.mixup_alpha', 0.2)."""
  key, text = override.split('=', 1)
  for kind in (int, float):
    try:
      return key, kind(text)
    except ValueError:
      pass
  return key, text


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--data', required=True)
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--preset', default='gpu')
  parser.add_argument('--train_seconds', type=float, default=300)
  parser.add_argument('--evals', type=int, default=20)
  parser.add_argument('--max_steps', type=int, default=100_000)
  parser.add_argument('--set', action='append', help='key=value overrides.')
  args = parser.parse_args()
  logging.set_verbosity(logging.INFO)
  config = _config(args)
  summary = train.train_and_evaluate(config, args.workdir)
  with open(os.path.join(args.workdir, 'budget.json')) as f:
    summary.update(json.load(f), batch=config.batch)
  print('SUMMARY', json.dumps(summary))
  with open(os.path.join(args.workdir, 'summary.json'), 'w') as f:
    json.dump(summary, f)


if __name__ == '__main__':
  main()
