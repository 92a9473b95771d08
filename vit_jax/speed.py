"""Measuring a ViT's speed: FLOPs, peak, the runners (ours, timm), report.

What `python -m vit_jax.benchmark` runs. `JaxRunner` times the real
training step (`train.make_train_step`: on-device preprocessing of uint8
images, forward, backward, gradient clipping, AdamW) or the real evaluation
step (`inference.make_eval_step`) on random images held on the device;
`TimmRunner` the same architecture in timm (PyTorch; torch.compile and AMP
on GPU). `measure` alternates them round by round so both see the same
machine load.

Model FLOPs are counted analytically (matmuls only; a train step counts
3x the forward pass), the convention for MFU; XLA's own count of the
compiled step is reported beside them.
"""

import dataclasses
import os
import platform
import resource
import statistics
import sys
import time
from typing import Any, Optional

import jax
import numpy as np

from vit_jax import models

NUM_CLASSES = 1000

# Dense peak TFLOP/s per device by device_kind substring (first match wins),
# for float32 and bfloat16 compute. float32 on GPUs is TF32 (JAX's default
# matmul precision there). Override with --peak_tflops.
PEAK_TFLOPS = (
    ('H100 PCIe', {'float32': 378.0, 'bfloat16': 756.0}),
    ('H100', {'float32': 494.7, 'bfloat16': 989.4}),
    ('H200', {'float32': 494.7, 'bfloat16': 989.4}),
    ('GH200', {'float32': 494.7, 'bfloat16': 989.4}),
    ('B200', {'float32': 1100.0, 'bfloat16': 2250.0}),
    ('A100', {'float32': 156.0, 'bfloat16': 312.0}),
    ('L4', {'float32': 60.0, 'bfloat16': 121.0}),
    ('A10', {'float32': 62.5, 'bfloat16': 125.0}),
    ('TPU v4', {'float32': 275.0, 'bfloat16': 275.0}),
    ('TPU v5 lite', {'float32': 197.0, 'bfloat16': 197.0}),
    ('TPU v5', {'float32': 459.0, 'bfloat16': 459.0}),
    ('TPU v6', {'float32': 918.0, 'bfloat16': 918.0}),
)


# ---------------------------------------------------------------- FLOPs, peak.


def forward_flops(model: models.VisionTransformer, image_size: int,
                  num_classes: int) -> float:
  """Matmul FLOPs of one image's forward pass (2 per multiply-add)."""
  d, m = model.hidden_size, model.transformer['mlp_dim']
  p = model.patches['size'][0]
  patches = (image_size // p) ** 2
  tokens = patches + model.has_class_token
  macs = patches * p * p * 3 * d  # Patch embedding.
  # q, k, v, out projections + MLP, then QK^T and AV.
  per_layer = tokens * (4 * d * d + 2 * d * m) + 2 * tokens * tokens * d
  macs += model.transformer['num_layers'] * per_layer
  width = d
  if model.representation_size:
    macs += d * model.representation_size
    width = model.representation_size
  macs += width * num_classes
  return 2.0 * macs


def step_flops(model: models.VisionTransformer, image_size: int,
               num_classes: int, mode: str) -> float:
  """Model FLOPs per image of a step: a train step counts 3 forward passes
  (the backward pass has two matmuls per forward one)."""
  forward = forward_flops(model, image_size, num_classes)
  return 3 * forward if mode == 'train' else forward


def _cpu_peak_tflops(cores: int) -> tuple[float, str]:
  """ISA peak at the reported clock: cores x MHz x 2 FMA pipes x 2 x lanes.

  An estimate: boost clocks run above the reported one, and some cores
  (AMD Zen 4) execute AVX-512 at half width. Pass --peak_tflops for a
  measured figure.
  """
  mhz, flags = 0.0, set()
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('cpu MHz') and not mhz:
          mhz = float(line.split(':')[1])
        elif line.startswith('flags') and not flags:
          flags = set(line.split(':')[1].split())
  except OSError:
    pass
  if not mhz:
    return 0.0, 'unknown CPU clock (pass --peak_tflops)'
  lanes = 16 if 'avx512f' in flags else 8 if 'fma' in flags else 4
  per_cycle = 2 * 2 * lanes
  return (cores * mhz * 1e6 * per_cycle / 1e12,
          f'estimate: {cores} cores x {mhz:.0f} MHz x {per_cycle} FLOP/cycle')


def peak_tflops(device, dtype: str) -> tuple[float, str]:
  """Per-device peak for MFU, and where the number comes from."""
  if device.platform == 'cpu':
    return _cpu_peak_tflops(os.cpu_count() or 1)
  for kind, peaks in PEAK_TFLOPS:
    if kind.lower() in device.device_kind.lower():
      return peaks[dtype], f'table: {kind} {dtype}'
  return 0.0, f'unknown device kind {device.device_kind!r} (pass --peak_tflops)'


# ------------------------------------------------------------------- Runners.


@dataclasses.dataclass
class Setup:
  """What a runner reports about itself after compiling."""
  name: str
  compile_s: float
  xla_flops_per_step: Optional[float] = None
  compiled_memory_gb: Optional[float] = None  # XLA's buffers for the step.
  peak_memory_gb: Optional[float] = None  # Measured after the timed steps.


def bench_config(args):
  """The base training config, edited to the benchmark's model and shapes."""
  from vit_jax.configs import common  # pylint: disable=g-import-not-at-top
  from vit_jax.configs import models as model_configs  # pylint: disable=g-import-not-at-top
  config = common.get_config()
  config.model = model_configs.model_config(
      args.model_name, dtype=args.dtype, attention_impl=args.attention_impl,
      remat=args.remat, fp8=args.fp8)
  config.dataset = 'synthetic'  # The benchmark makes its own images.
  config.batch = config.batch_eval = args.batch
  config.accum_steps = 1
  config.pp = common.pp_config(crop=args.image_size)
  config.pp.resize = args.image_size  # No resize, no crop.
  config.optimizer = 'adamw'
  config.optim_dtype = 'float32'
  config.weight_decay = 0.05
  config.warmup_steps = 10
  config.total_steps = 1_000_000
  config.pretrained_dir = None
  return config


class JaxRunner:
  """Our jitted train or eval step on a fixed random batch on the device."""

  def __init__(self, args):
    from vit_jax import inference  # pylint: disable=g-import-not-at-top
    from vit_jax import sharding  # pylint: disable=g-import-not-at-top
    self.mode = args.mode
    config = bench_config(args)
    model = inference.make_model(config, NUM_CLASSES)
    self.model = model
    mesh = sharding.make_mesh()
    sharding.check_batch_sizes(config, mesh)
    rng = np.random.default_rng(0)
    size = args.image_size
    batched = jax.sharding.NamedSharding(mesh,
                                         jax.sharding.PartitionSpec('data'))
    self.images = jax.device_put(
        rng.integers(0, 256, (args.batch, size, size, 3), np.uint8), batched)
    self.labels = jax.device_put(
        rng.integers(0, NUM_CLASSES, (args.batch,), np.int32), batched)
    self.state, self.step_fn = _state_and_step(model, config, mesh, args.mode)
    self.outputs = None

  def compile(self) -> Setup:
    start = time.perf_counter()
    compiled = self.step_fn.lower(self.state, self.images,
                                  self.labels).compile()
    compile_s = time.perf_counter() - start
    self.step_fn = compiled
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0] if cost else None
    flops = (cost or {}).get('flops')
    memory = compiled.memory_analysis()
    memory_gb = None
    if memory is not None:
      memory_gb = (memory.argument_size_in_bytes + memory.output_size_in_bytes
                   + memory.temp_size_in_bytes
                   - memory.alias_size_in_bytes) / 1e9
    return Setup('vit_jax', compile_s,
                 float(flops) if flops and flops > 0 else None, memory_gb)

  def run(self, steps: int) -> float:
    """Seconds for `steps` steps; no host sync until the last has finished."""
    start = time.perf_counter()
    for _ in range(steps):
      if self.mode == 'train':
        self.state, self.outputs = self.step_fn(self.state, self.images,
                                                self.labels)
      else:
        self.outputs = self.step_fn(self.state, self.images, self.labels)
    jax.block_until_ready(self.outputs)
    return time.perf_counter() - start


def _state_and_step(model, config, mesh, mode: str):
  """Random parameters (and AdamW state) replicated, and the jitted step."""
  from vit_jax import inference  # pylint: disable=g-import-not-at-top
  from vit_jax import optim  # pylint: disable=g-import-not-at-top
  from vit_jax import train  # pylint: disable=g-import-not-at-top
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  params = inference.init_params(model, config.pp.crop, seed=0,
                                 out_sharding=replicated)
  if mode == 'infer':
    return params, inference.make_eval_step(model, config.pp.crop)
  tx = optim.make_optimizer(config)
  state = inference.new_train_state(params, tx, ema=False,
                                    out_sharding=replicated)
  return state, train.make_train_step(model, tx, config, NUM_CLASSES,
                                      frozen=False)


_TORCH_MISSING = (
    '--compare timm needs torch and timm in this Python ({python}): '
    '`pip install timm torch` (CPU-only wheels: `pip install torch '
    '--index-url https://download.pytorch.org/whl/cpu`), or run this module '
    'with a Python that has them after `pip install -e <this repo> --no-deps`.')


def _import_timm():
  """(timm, torch), or exit saying how to install them."""
  try:
    import timm  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise SystemExit(_TORCH_MISSING.format(python=sys.executable)) from e
  return timm, torch


def _timm_vit(model: models.VisionTransformer, image_size: int):
  """timm's VisionTransformer with our architecture (tanh GELU, as ours)."""
  from timm.models import vision_transformer  # pylint: disable=g-import-not-at-top
  t = model.transformer
  return vision_transformer.VisionTransformer(
      img_size=image_size, patch_size=model.patches['size'][0],
      embed_dim=model.hidden_size, depth=t['num_layers'],
      num_heads=t['num_heads'], mlp_ratio=t['mlp_dim'] / model.hidden_size,
      num_classes=NUM_CLASSES, class_token=model.has_class_token,
      global_pool='token' if model.classifier == 'token' else 'avg',
      act_layer='gelu_tanh')


class TimmRunner:
  """The same architecture in timm: AdamW step or inference, same batch."""

  def __init__(self, args, ours: models.VisionTransformer):
    timm, torch = _import_timm()
    self.torch = torch
    self.mode = args.mode
    cuda = torch.cuda.is_available()
    self.device = torch.device('cuda' if cuda else 'cpu')
    if cuda:
      torch.backends.cuda.matmul.allow_tf32 = True  # As JAX's default.
      torch.backends.cudnn.allow_tf32 = True
    model = _timm_vit(ours, args.image_size).to(self.device)
    model.train(self.mode == 'train')
    self.optimizer = None
    if self.mode == 'train':
      self.optimizer = torch.optim.AdamW(
          model.parameters(), lr=1e-4, weight_decay=0.05,
          **({'fused': True} if cuda else {}))
    compile_mode = args.timm_compile
    self.compiled = compile_mode == 'on' or (compile_mode == 'auto' and cuda)
    self.model = torch.compile(model) if self.compiled else model
    self.params = list(model.parameters())
    self.amp = args.dtype == 'bfloat16'
    gen = torch.Generator().manual_seed(0)
    size = args.image_size
    self.images = (torch.rand((args.batch, 3, size, size), generator=gen) * 2
                   - 1).to(self.device)
    self.labels = torch.randint(0, NUM_CLASSES, (args.batch,),
                                generator=gen).to(self.device)
    self.name = (f'timm {timm.__version__} (torch {torch.__version__}, '
                 f'{"compiled" if self.compiled else "eager"}'
                 f'{", bf16 autocast" if self.amp else ""})')

  def _autocast(self):
    return self.torch.autocast(self.device.type, dtype=self.torch.bfloat16,
                               enabled=self.amp)

  def _step(self):
    torch = self.torch
    if self.mode == 'train':
      with self._autocast():
        loss = torch.nn.functional.cross_entropy(self.model(self.images),
                                                 self.labels)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(self.params, 1.0)
      self.optimizer.step()
      self.optimizer.zero_grad(set_to_none=True)
    else:
      with torch.inference_mode(), self._autocast():
        self.model(self.images)

  def _sync(self):
    if self.device.type == 'cuda':
      self.torch.cuda.synchronize()

  def compile(self) -> Setup:
    """The first step (torch.compile's tracing and codegen when on)."""
    start = time.perf_counter()
    self._step()
    self._sync()
    return Setup(self.name, time.perf_counter() - start)

  def peak_memory_gb(self) -> Optional[float]:
    if self.device.type != 'cuda':
      return None
    return self.torch.cuda.max_memory_allocated() / 1e9

  def run(self, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
      self._step()
    self._sync()
    return time.perf_counter() - start


def measure(runners, *, rounds: int, steps: int, warmup: int,
            batch: int) -> list[list[float]]:
  """img/s of each runner per round, runners alternating within a round.

  Each round warms its runner up again, so thread pools and caches left
  cold (or busy) by the other framework do not count against it.
  """
  speeds = [[] for _ in runners]
  for runner in runners:
    runner.run(warmup)
  for _ in range(rounds):
    for i, runner in enumerate(runners):
      runner.run(1)
      speeds[i].append(steps * batch / runner.run(steps))
  return speeds


# -------------------------------------------------------------------- Report.


def _peak_memory() -> tuple[Optional[float], str]:
  stats = jax.devices()[0].memory_stats()
  if stats and 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'] / 1e9, 'device 0 peak_bytes_in_use'
  rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return rss_kb / 1e6, 'host process max RSS (no device memory stats)'


def build_report(args, setup: Setup, speeds: list[float],
                 model: models.VisionTransformer,
                 timm: Optional[tuple[Setup, list[float]]],
                 load_at_start: Optional[list[float]]) -> dict[str, Any]:
  """All numbers of a run, JSON-serialisable."""
  device = jax.devices()[0]
  devices = jax.device_count()
  img_s = statistics.median(speeds)
  flops_image = step_flops(model, args.image_size, NUM_CLASSES,
                           args.mode)
  tflops = img_s * flops_image / 1e12
  peak, peak_source = (
      (args.peak_tflops, 'flag') if args.peak_tflops
      else peak_tflops(device, args.dtype))
  memory, memory_source = _peak_memory()
  report = {
      'model': args.model_name, 'mode': args.mode, 'batch': args.batch,
      'image_size': args.image_size, 'dtype': args.dtype,
      'attention_impl': args.attention_impl,
      'attention_used': models.attention_plan(
          model, args.image_size, args.mode == 'train').describe(),
      'remat': args.remat,
      'fp8': args.fp8,
      'reuse_host_memory': args.reuse_host_memory,
      'backend': device.platform, 'device_kind': device.device_kind,
      'devices': devices,
      'img_per_s': img_s, 'img_per_s_per_device': img_s / devices,
      'step_ms': 1e3 * args.batch / img_s,
      'rounds_img_per_s': speeds,
      'model_gflops_per_image': flops_image / 1e9,
      'model_tflops_per_s': tflops,
      'xla_gflops_per_image': (setup.xla_flops_per_step / args.batch / 1e9
                               if setup.xla_flops_per_step else None),
      'peak_tflops_per_device': peak or None, 'peak_source': peak_source,
      'mfu': tflops / (peak * devices) if peak else None,
      'compile_s': setup.compile_s,
      'peak_memory_gb': memory, 'memory_source': memory_source,
      'compiled_memory_gb': setup.compiled_memory_gb,
      'steps': args.steps, 'rounds': args.rounds, 'warmup': args.warmup,
      'jax': jax.__version__, 'xla_flags': os.environ.get('XLA_FLAGS', ''),
      # glibc.malloc.hugetlb=1 here: huge pages for XLA:CPU's scratch memory.
      'glibc_tunables': os.environ.get('GLIBC_TUNABLES', ''),
      'cpu': _cpu_name(), 'date': time.strftime('%Y-%m-%d'),
      # Other work on the machine moves both libraries' speeds, not equally.
      'load_average_at_start': load_at_start,
  }
  if timm:
    timm_setup, timm_speeds = timm
    timm_img_s = statistics.median(timm_speeds)
    report.update({
        'timm': timm_setup.name, 'timm_img_per_s': timm_img_s,
        'timm_rounds_img_per_s': timm_speeds,
        'timm_first_step_s': timm_setup.compile_s,
        'timm_peak_memory_gb': timm_setup.peak_memory_gb,
        # Per round, then the median: both saw the same load in a round.
        'ratio_vs_timm': statistics.median(
            a / b for a, b in zip(speeds, timm_speeds)),
    })
  return report


def host_load() -> Optional[list[float]]:
  """The 1-, 5- and 15-minute load averages; None where the OS has none."""
  try:
    return [round(load, 2) for load in os.getloadavg()]
  except (OSError, AttributeError):
    return None


def _cpu_name() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def format_table(report: dict[str, Any]) -> str:
  def fmt(value, spec):
    return '-' if value is None else format(value, spec)
  rows = [
      ('model', f"{report['model']} {report['image_size']}px, "
                f"{report['mode']}, batch {report['batch']}, "
                f"{report['dtype']}"
                + (' with FP8 matmuls' if report['fp8'] else '')
                + f", attention {report['attention_impl']} "
                f"({report['attention_used']})"),
      ('device', f"{report['devices']} x {report['device_kind']} "
                 f"({report['backend']}; {report['cpu']})"
                 + ('; steps on the main thread, heap reused'
                    if report['reuse_host_memory'] else '')),
      ('host load', 'at start, 1/5/15 min: ' + (
          ', '.join(f'{load:.2f}' for load in report['load_average_at_start'])
          if report['load_average_at_start'] else '-')),
      ('img/s', f"{report['img_per_s']:.2f} (per device "
                f"{report['img_per_s_per_device']:.2f}; rounds "
                + ', '.join(f'{s:.2f}' for s in report['rounds_img_per_s'])
                + ')'),
      ('step', f"{report['step_ms']:.1f} ms"),
      ('model TFLOP/s', f"{report['model_tflops_per_s']:.3f} "
                        f"({report['model_gflops_per_image']:.2f} GFLOP/img; "
                        'XLA counts '
                        f"{fmt(report['xla_gflops_per_image'], '.2f')})"),
      ('MFU', f"{fmt(report['mfu'], '.1%')} of "
              f"{fmt(report['peak_tflops_per_device'], '.2f')} TFLOP/s/device "
              f"({report['peak_source']})"),
      ('compile', f"{report['compile_s']:.1f} s"),
      ('memory', f"{fmt(report['peak_memory_gb'], '.2f')} GB "
                 f"({report['memory_source']}); XLA buffers "
                 f"{fmt(report['compiled_memory_gb'], '.2f')} GB"),
  ]
  if 'timm' in report:
    rows += [
        ('timm', report['timm']),
        ('timm img/s', f"{report['timm_img_per_s']:.2f} (rounds "
                       + ', '.join(f'{s:.2f}'
                                   for s in report['timm_rounds_img_per_s'])
                       + f"; first step {report['timm_first_step_s']:.1f} s)"),
        ('vit_jax / timm', f"{report['ratio_vs_timm']:.3f}x"),
    ]
  width = max(len(k) for k, _ in rows)
  return '\n'.join(f'{k:<{width}}  {v}' for k, v in rows)


def run(args) -> dict[str, Any]:
  """Builds, compiles and times the runners; returns the report."""
  load_at_start = host_load()
  if args.compare == 'timm':
    _import_timm()  # Before minutes of compiling, not after.
  ours = JaxRunner(args)
  setup = ours.compile()
  runners = [ours]
  timm_setup = None
  if args.compare == 'timm':
    runners.append(TimmRunner(args, ours.model))
    timm_setup = runners[1].compile()
  speeds = measure(runners, rounds=args.rounds, steps=args.steps,
                   warmup=args.warmup, batch=args.batch)
  timm = None
  if timm_setup:
    timm_setup.peak_memory_gb = runners[1].peak_memory_gb()
    timm = (timm_setup, speeds[1])
  return build_report(args, setup, speeds[0], ours.model, timm,
                      load_at_start)
