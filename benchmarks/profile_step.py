"""Where a training or inference step's time goes: a per-op table.

  python benchmarks/profile_step.py --model_name ViT-B_16 --mode train --batch 256 \
      --dtype bfloat16 --out DIR [--compare timm]

Builds the step exactly as `python -m vit_jax.benchmark` does (same flags),
runs a few steps under `jax.profiler.trace` and sums the durations of the
device's (GPU) or XLA's (CPU) events by name from the Perfetto trace JSON
that JAX writes. Writes DIR/profile_<mode>.txt (the top ops, their share of
the profiled time and a coarse class: matmul, attention, norms and other
reductions, elementwise fusions, copies) and keeps the trace itself under
DIR/trace_<mode>/ for a closer look in Perfetto.

With `--compare timm`, timm's step (`speed.TimmRunner`, as the benchmark
builds it) runs the same number of steps under `torch.profiler`:
DIR/profile_<mode>_timm.txt holds its table and DIR/profile_<mode>_vs_timm.txt
the two side by side, class by class, in milliseconds per step. On a GPU
both sides are kernel times on the device. On a CPU they are not alike
(ours: XLA's ops summed over its threads; timm: each op's own time on the
calling thread), so there the side-by-side table only rehearses the script.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

import jax

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
from vit_jax import benchmark  # pylint: disable=g-import-not-at-top
from vit_jax import speed  # pylint: disable=g-import-not-at-top

# Event-name patterns -> class, first match wins: cuDNN/cuBLAS/Triton kernel
# names on GPU (ours and timm's), HLO instruction names (ours) and aten op
# names (timm's) on CPU.
CLASSES = (
    ('ynnpack fusion (dots with their elementwise ops)', r'ynn_fusion'),
    ('attention', r'flash|fmha|cudnn.*attn|sdpa|__cudnn\$fmha|dot_product_att'),
    # One class for both sides: timm's Triton kernels name the LayerNorm,
    # XLA's fusions only say "reduce".
    ('norms and reductions (layernorm, softmax, loss)',
     r'layer_?norm|cudnn.*norm|__cudnn\$norm|reduce|reduction|softmax'
     r'|aten::(sum|mean|amax|max)$|vector_norm'),
    # nvjet: cuBLAS's Hopper GEMM kernels.
    ('matmul', r'gemm|cublas|cutlass|nvjet|sm\d+_xmma|wgmma|dot|convolution'
               r'|conv2d|(^|[_:])(add|b)?mm($|_)|linear|matmul'),
    ('copy/transpose', r'copy|transpose|memcpy|memset|clone|contiguous'),
    # XLA fuses the optimizer's update into elementwise loops: timm's AdamW
    # kernels count here too, so the two sides stay comparable.
    ('elementwise (fusions, optimizer)',
     r'fusion|loop|input_|triton_|elementwise|multi_tensor_apply|adam'
     r'|aten::(add|sub|mul|div|sqrt|rsqrt|lerp|addcmul|addcdiv|gelu|tanh'
     r'|exp|neg|where|pow|_foreach)'),
)


def op_class(name: str) -> str:
  lowered = name.lower()
  for label, pattern in CLASSES:
    if re.search(pattern, lowered):
      return label
  return 'other'


def jax_op_times(trace_path: str, on_device: bool) -> collections.Counter:
  """Microseconds per event name in JAX's Perfetto trace: the GPU's kernels,
  or on CPU the ops on XLA's threads."""
  with gzip.open(trace_path, 'rt') as f:
    trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  threads = {}
  for e in events:
    if e.get('ph') == 'M' and e.get('name') == 'thread_name':
      threads[(e['pid'], e['tid'])] = e['args'].get('name', '')
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
  return totals


# Chrome-trace categories of torch.profiler's device events.
_TORCH_DEVICE_CATEGORIES = ('kernel', 'gpu_memcpy', 'gpu_memset')


def torch_op_times(prof, on_device: bool, trace_path: str
                   ) -> collections.Counter:
  """Microseconds per name in a finished `torch.profiler.profile`: the GPU's
  kernels (from its Chrome trace, written to `trace_path`), or on CPU each
  aten op's self time (its children's time excluded, so nothing counts
  twice)."""
  totals = collections.Counter()
  if not on_device:
    for event in prof.key_averages():
      if event.self_cpu_time_total > 0:
        totals[event.key] += event.self_cpu_time_total
    return totals
  prof.export_chrome_trace(trace_path)
  with open(trace_path) as f:
    trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  for e in events:
    if e.get('cat') in _TORCH_DEVICE_CATEGORIES and 'dur' in e:
      totals[e['name']] += e['dur']
  return totals


def by_class(totals: collections.Counter) -> collections.Counter:
  classes = collections.Counter()
  for name, dur in totals.items():
    classes[op_class(name)] += dur
  return classes


def summarize(totals: collections.Counter, steps: int, what: str,
              top: int = 40) -> str:
  """A table of the events' total and per-step durations, largest first."""
  total = sum(totals.values()) or 1
  lines = [f'profiled {steps} steps; {total / 1e3 / steps:.2f} ms of '
           f'{what} per step', '', 'by class:']
  for label, dur in by_class(totals).most_common():
    lines.append(f'  {label:48s} {dur / 1e3 / steps:10.2f} ms/step '
                 f'{dur / total:6.1%}')
  lines += ['', f'top {top} ops:']
  for name, dur in totals.most_common(top):
    lines.append(f'  {dur / 1e3 / steps:10.3f} ms/step {dur / total:6.1%}  '
                 f'[{op_class(name)}] {name[:110]}')
  return '\n'.join(lines)


def side_by_side(ours: collections.Counter, timm: collections.Counter,
                 steps: int) -> str:
  """Per class, ms per step of ours and timm's and their ratio, and the
  totals: where the two steps' milliseconds differ."""
  ours_classes, timm_classes = by_class(ours), by_class(timm)
  labels = [label for label, _ in (ours_classes + timm_classes).most_common()]
  rows = [(label, ours_classes[label], timm_classes[label])
          for label in labels]
  rows.append(('all', sum(ours.values()), sum(timm.values())))
  lines = [f'{"class":48s} {"ours ms":>10s} {"timm ms":>10s} '
           f'{"ours/timm":>9s}']
  for label, mine, theirs in rows:
    ratio = f'{mine / theirs:9.2f}' if theirs else f'{"-":>9s}'
    lines.append(f'{label:48s} {mine / 1e3 / steps:10.2f} '
                 f'{theirs / 1e3 / steps:10.2f} {ratio}')
  return '\n'.join(lines)


def profile_ours(args, steps: int, out: str, on_device: bool):
  """(ours' op times, the model's config), after a warm-up."""
  runner = speed.JaxRunner(args)
  runner.compile()
  runner.run(max(args.warmup, 1))
  trace_dir = os.path.join(out, f'trace_{args.mode}')
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    runner.run(steps)
  traces = sorted(glob.glob(os.path.join(trace_dir, '**',
                                         'perfetto_trace.json.gz'),
                            recursive=True))
  if not traces:
    raise SystemExit(f'no perfetto_trace.json.gz under {trace_dir}: the '
                     'profiler wrote nothing (is another profile running?).')
  return jax_op_times(traces[-1], on_device), runner.model_config


def profile_timm(args, model_config, steps: int):
  """timm's op times for the same step, after its first step (torch.compile
  where on) and a warm-up."""
  runner = speed.TimmRunner(args, model_config)
  runner.compile()
  runner.run(max(args.warmup, 1))
  from torch import profiler  # pylint: disable=g-import-not-at-top
  on_device = runner.device.type == 'cuda'
  activities = [profiler.ProfilerActivity.CPU]
  if on_device:
    activities.append(profiler.ProfilerActivity.CUDA)
  with profiler.profile(activities=activities) as prof:
    runner.run(steps)
  # torch's Chrome trace of a ViT-B/16 step runs to hundreds of MB: read it
  # from a scratch file and keep only the table.
  with tempfile.TemporaryDirectory() as scratch:
    trace_path = os.path.join(scratch, 'trace.json')
    return torch_op_times(prof, on_device, trace_path), on_device


def write(path: str, text: str) -> None:
  with open(path, 'w') as f:
    f.write(text + '\n')
  print(text)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', required=True)
  parser.add_argument('--profile_steps', type=int, default=3)
  ours, rest = parser.parse_known_args()
  args = benchmark.parse_args(rest)
  steps = ours.profile_steps
  os.makedirs(ours.out, exist_ok=True)
  on_device = jax.default_backend() != 'cpu'
  mine, model_config = profile_ours(args, steps, ours.out, on_device)
  prefix = os.path.join(ours.out, f'profile_{args.mode}')
  write(f'{prefix}.txt', summarize(
      mine, steps, 'device kernels' if on_device else 'XLA ops'))
  if args.compare != 'timm':
    return
  theirs, timm_on_device = profile_timm(args, model_config, steps)
  write(f'{prefix}_timm.txt', summarize(
      theirs, steps, 'device kernels' if timm_on_device else 'aten ops'))
  write(f'{prefix}_vs_timm.txt', side_by_side(mine, theirs, steps))


if __name__ == '__main__':
  main()
