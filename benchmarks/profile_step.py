"""Where a training or inference step's time goes: a per-op table.

  python benchmarks/profile_step.py --model_name ViT-B_16 --mode train --batch 256 \
      --dtype bfloat16 --out DIR

Builds the step exactly as `python -m vit_jax.benchmark` does (same flags),
runs a few steps under `jax.profiler.trace` and sums the durations of the
device's (GPU) or XLA's (CPU) events by name from the Perfetto trace JSON
that JAX writes. Writes DIR/profile_<mode>.txt (the top ops, their share of
the profiled time and a coarse class: matmul, attention, layernorm-like
reductions, elementwise fusions, copies) and keeps the trace itself under
DIR/trace_<mode>/ for a closer look in Perfetto.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys

import jax

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
from vit_jax import benchmark  # pylint: disable=g-import-not-at-top
from vit_jax import speed  # pylint: disable=g-import-not-at-top

# Event-name patterns -> class, first match wins (cuDNN/cuBLAS kernel names
# on GPU, HLO instruction names on CPU).
CLASSES = (
    ('ynnpack fusion (dots with their elementwise ops)', r'ynn_fusion'),
    ('attention', r'flash|fmha|cudnn.*attn|sdpa|__cudnn\$fmha|dot_product_att'),
    ('layernorm', r'layer_?norm|cudnn.*norm|__cudnn\$norm'),
    ('matmul', r'gemm|cublas|cutlass|sm\d+_xmma|wgmma|dot|convolution|conv'),
    ('copy/transpose', r'copy|transpose|memcpy|memset'),
    ('reduce', r'reduce|reduction'),
    ('fusion (elementwise)', r'fusion|loop|input_'),
)


def op_class(name: str) -> str:
  lowered = name.lower()
  for label, pattern in CLASSES:
    if re.search(pattern, lowered):
      return label
  return 'other'


def summarize(trace_path: str, steps: int, top: int = 40) -> str:
  """A table of the events' total and per-step durations, largest first."""
  with gzip.open(trace_path, 'rt') as f:
    trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  threads = {}
  for e in events:
    if e.get('ph') == 'M' and e.get('name') == 'thread_name':
      threads[(e['pid'], e['tid'])] = e['args'].get('name', '')
  on_device = jax.default_backend() != 'cpu'
  totals = collections.Counter()
  for e in events:
    if e.get('ph') != 'X' or 'dur' not in e:
      continue
    thread = threads.get((e.get('pid'), e.get('tid')), '')
    if on_device:
      # GPU kernels sit on the stream threads of the device's process.
      if 'stream' not in thread.lower():
        continue
    elif not re.search(r'xla|eigen|tf_|intra|worker', thread.lower()):
      continue
    if '::' in e['name']:
      continue  # Host-side runtime scopes (e.g. ThunkExecutor::Execute) nest the ops.
    totals[e['name']] += e['dur']
  total = sum(totals.values()) or 1
  by_class = collections.Counter()
  for name, dur in totals.items():
    by_class[op_class(name)] += dur
  lines = [f'profiled {steps} steps; {total / 1e3 / steps:.2f} ms of '
           f'{"device kernels" if on_device else "XLA ops"} per step', '',
           'by class:']
  for label, dur in by_class.most_common():
    lines.append(f'  {label:48s} {dur / 1e3 / steps:10.2f} ms/step '
                 f'{dur / total:6.1%}')
  lines += ['', f'top {top} ops:']
  for name, dur in totals.most_common(top):
    lines.append(f'  {dur / 1e3 / steps:10.3f} ms/step {dur / total:6.1%}  '
                 f'[{op_class(name)}] {name[:110]}')
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', required=True)
  parser.add_argument('--profile_steps', type=int, default=3)
  ours, rest = parser.parse_known_args()
  args = benchmark.parse_args(rest)
  runner = speed.JaxRunner(args)
  runner.compile()
  runner.run(max(args.warmup, 1))
  trace_dir = os.path.join(ours.out, f'trace_{args.mode}')
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    runner.run(ours.profile_steps)
  traces = sorted(glob.glob(os.path.join(trace_dir, '**',
                                         'perfetto_trace.json.gz'),
                            recursive=True))
  if not traces:
    raise SystemExit(f'no perfetto_trace.json.gz under {trace_dir}: the '
                     'profiler wrote nothing (is another profile running?).')
  table = summarize(traces[-1], ours.profile_steps)
  path = os.path.join(ours.out, f'profile_{args.mode}.txt')
  with open(path, 'w') as f:
    f.write(table + '\n')
  print(table)


if __name__ == '__main__':
  main()
