"""Our step compiled with different XLA options, timed alternately in one process.

  python benchmarks/compare_xla_options.py --model_name ViT-Ti_16 --mode train \
      --batch 32 --opts '{}' --opts '{"xla_cpu_experimental_ynn_fusion_type": ""}' --opts '{}'

Each `--opts` is a JSON dict of XLA compile options (DebugOptions fields)
given to `.compile()`, so one process can hold several variants and time them
round by round (`vit_jax.speed.measure`): every variant sees the same machine
load. Repeat `{}` at the end as a control: its spread against the first `{}`
is the run-to-run noise. Ratios are medians of per-round ratios to the first.
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
from vit_jax import benchmark  # pylint: disable=g-import-not-at-top
from vit_jax import speed  # pylint: disable=g-import-not-at-top


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--model_name', default='ViT-Ti_16')
  parser.add_argument('--mode', choices=('train', 'infer'), default='train')
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--rounds', type=int, default=4)
  parser.add_argument('--steps', type=int, default=2)
  parser.add_argument('--opts', action='append', required=True,
                      help='JSON dict of XLA compile options; repeatable.')
  return parser.parse_args()


def compiled_runner(bench_args, options: dict) -> speed.JaxRunner:
  """A runner whose step is compiled with `options`."""
  runner = speed.JaxRunner(bench_args)
  start = time.perf_counter()
  runner.step_fn = runner.step_fn.lower(runner.state, runner.images,
                                        runner.labels).compile(options or None)
  print(f'compiled {json.dumps(options)} in '
        f'{time.perf_counter() - start:.1f} s', flush=True)
  return runner


def main():
  args = parse_args()
  bench_args = benchmark.parse_args(['--model_name', args.model_name, '--mode',
                                     args.mode, '--batch', str(args.batch)])
  options = [json.loads(text) for text in args.opts]
  runners = [compiled_runner(bench_args, o) for o in options]
  speeds = speed.measure(runners, rounds=args.rounds, steps=args.steps,
                         warmup=1, batch=args.batch)
  for text, rounds in zip(args.opts, speeds):
    ratio = statistics.median(x / b for x, b in zip(rounds, speeds[0]))
    print(f'{text:55s} {statistics.median(rounds):7.2f} img/s  '
          f'x{ratio:.3f} vs first  rounds {[round(x, 2) for x in rounds]}')


if __name__ == '__main__':
  main()
