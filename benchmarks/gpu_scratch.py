"""From-scratch CIFAR-10 on one GPU within a wall-clock budget.

  python benchmarks/gpu_scratch.py --data /tmp/cifar10 --workdir $OUT/scratch \
      --train_seconds 300

Measures the full recipe's step rate for a few steps, sets total_steps so
the cosine schedule ends inside the budget, then runs the real
`train.train_and_evaluate`. Its metrics.jsonl holds accuracy against
training seconds (time to 90% / 94% are read from it).
"""

import argparse
import json
import os
import time

from absl import logging
import jax

from configs import cifar10_scratch
from vit_jax import train


def _config(args, total_steps):
  config = cifar10_scratch.get_config(args.preset)
  with config.unlocked():
    config.dataset = args.data
    config.total_steps = total_steps
    config.eval_every = max(total_steps // args.evals, 1)
    config.checkpoint_every = total_steps
    config.progress_every = max(total_steps // 50, 1)
    for override in args.set or []:
      key, value = override.split('=', 1)
      node = config
      *parents, leaf = key.split('.')
      for p in parents:
        node = node[p]
      node[leaf] = _parse(value)
  return config


def _parse(text: str):
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return text


def steps_per_second(config, workdir, steps=20):
  """Times the real train step (after compiling) on the real data."""
  trainer = train.Trainer(config, workdir)
  state = trainer.state
  for step in range(3 + steps):
    if step == 3:
      jax.block_until_ready(state)
      start = time.monotonic()
    images, labels = trainer.train_batch(step)
    state, _ = trainer.steps[False](state, images, labels)
  jax.block_until_ready(state)
  return steps / (time.monotonic() - start)


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
  probe = _config(args, 1000)
  rate = steps_per_second(probe, args.workdir + '_probe')
  # Evaluation and the first compile take time too: keep 8% in reserve.
  total = min(int(rate * args.train_seconds * 0.92), args.max_steps)
  logging.info('Probe: %.2f steps/s (%.0f img/s); total_steps=%d', rate,
               rate * probe.batch, total)
  summary = train.train_and_evaluate(_config(args, total), args.workdir)
  summary.update(probe_steps_per_second=rate, batch=probe.batch,
                 img_per_sec=rate * probe.batch)
  print('SUMMARY', json.dumps(summary))
  with open(os.path.join(args.workdir, 'summary.json'), 'w') as f:
    json.dump(summary, f)


if __name__ == '__main__':
  main()
