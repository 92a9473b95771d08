"""Ablation of the from-scratch CIFAR-10 recipe on an equal image budget.

  python benchmarks/scratch_ablation.py --out runs/ablation --images 102400 \
      --tfds_data_dir ../shared/data/tensorflow_datasets [--only base,no_flip] \
      [--set model.patch_dropout=0]

Each variant is the `:cpu` preset of configs/cifar10_scratch.py with a few
config overrides, trained by the real command line
(`python -m vit_jax.main`) for the same number of training images and
evaluated once at the end on the full test split. Accuracy on an equal image
budget does not depend on how loaded the machine is, so variants can be run
while other work shares the cores; only the seconds column does.
Results go to <out>/results.jsonl (one line per variant, appended as each
finishes, so nothing is lost if the run is stopped) and a Markdown table on
stdout.
"""

import argparse
import json
import os
import subprocess
import sys
import time

# name -> (what it changes, config overrides). Batch variants keep the image
# budget: their step count is images / batch.
VARIANTS = {
    'base': ('the :cpu preset', {}),
    'no_crop': ('no pad-and-crop jitter', {'aug.crop_padding': 0}),
    'no_flip': ('no horizontal flips', {'aug.flip': False}),
    'no_label_smoothing': ('label smoothing 0.1 -> 0',
                           {'aug.label_smoothing': 0.0}),
    'no_weight_decay': ('weight decay 0.05 -> 0', {'weight_decay': 0.0}),
    'token': ('class token instead of mean pooling',
              {'model.classifier': 'token'}),
    'no_warmup': ('no warm-up', {'warmup_steps': 0}),
    'lr_1e-3': ('peak learning rate 1e-3', {'base_lr': 1e-3}),
    'lr_4e-3': ('peak learning rate 4e-3', {'base_lr': 4e-3}),
    'lr_8e-3': ('peak learning rate 8e-3', {'base_lr': 8e-3}),
    'batch_64': ('batch 128 -> 64 (twice the steps)', {'batch': 64}),
    'batch_256': ('batch 256, lr 4e-3 (half the steps)',
                  {'batch': 256, 'base_lr': 4e-3}),
    'b2_0.99': ('Adam b2 0.999 -> 0.99', {'b2': 0.99}),
    'randaugment': ('RandAugment 2 ops, magnitude 9',
                    {'aug.randaugment_ops': 2}),
    'mixup_cutmix': ('mixup 0.8 / cutmix 1.0', {'aug.mixup_alpha': 0.8,
                                                'aug.cutmix_alpha': 1.0}),
    'stochastic_depth': ('stochastic depth 0.1',
                         {'model.stochastic_depth': 0.1}),
    'ema': ('EMA of weights, decay 0.999', {'ema_decay': 0.999}),
    'gpu_regularizers': ('RandAugment + mixup/cutmix + stochastic depth 0.1',
                         {'aug.randaugment_ops': 2, 'aug.mixup_alpha': 0.8,
                          'aug.cutmix_alpha': 1.0,
                          'model.stochastic_depth': 0.1}),
    'bfloat16': ('bfloat16 compute (float32 parameters)',
                 {'model.dtype': 'bfloat16'}),
    'patch_dropout_0.5': ('train on a random half of the patch tokens',
                          {'model.patch_dropout': 0.5}),
    'adamw': ('AdamW lr 2e-3 instead of Muon lr 8e-3',
              {'optimizer': 'adamw', 'base_lr': 2e-3}),
    'muon': ('Muon on the encoder kernels, at the base learning rate',
             {'optimizer': 'muon'}),
    'muon_lr_4e-3': ('Muon, peak learning rate 4e-3',
                     {'optimizer': 'muon', 'base_lr': 4e-3}),
    'width_128': ('width 96 -> 128, MLP 256, 4 heads',
                  {'model.hidden_size': 128, 'model.transformer.mlp_dim': 256,
                   'model.transformer.num_heads': 4}),
    'depth_6': ('depth 4 -> 6', {'model.transformer.num_layers': 6}),
    'patch_dropout_0.25': ('train on a random 3/4 of the patch tokens',
                           {'model.patch_dropout': 0.25}),
}


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', required=True, help='Folder for the runs.')
  parser.add_argument('--images', type=int, default=102_400,
                      help='Training images per variant.')
  parser.add_argument('--warmup_images', type=int, default=12_800,
                      help='Warm-up length in images (steps scale with batch).')
  parser.add_argument('--tfds_data_dir', default=None)
  parser.add_argument('--preset', default='cpu')
  parser.add_argument('--only', default=None,
                      help=f'Comma-separated subset of: {", ".join(VARIANTS)}')
  parser.add_argument('--set', action='append', default=[],
                      help='key=value applied to every variant (before its '
                           'own overrides), e.g. model.patch_dropout=0.')
  args = parser.parse_args(argv)
  names = args.only.split(',') if args.only else list(VARIANTS)
  unknown = [n for n in names if n not in VARIANTS]
  if unknown:
    parser.error(f'unknown variants {unknown}; known: {", ".join(VARIANTS)}')
  args.names = names
  return args


def command(args, overrides: dict, workdir: str) -> list[str]:
  """The `python -m vit_jax.main` command line of one variant."""
  batch = overrides.get('batch', 128)
  steps = args.images // batch
  settings = {'total_steps': steps, 'train_minutes': 0, 'eval_count': 0,
              'eval_every': steps, 'checkpoint_every': steps,
              'progress_every': max(steps // 8, 1)}
  if 'warmup_steps' not in overrides:
    settings['warmup_steps'] = args.warmup_images // batch
  if args.tfds_data_dir:
    settings['tfds_data_dir'] = args.tfds_data_dir
  settings.update(s.split('=', 1) for s in args.set)
  settings.update(overrides)  # The variant's own change wins over --set.
  return [sys.executable, '-m', 'vit_jax.main', '--config',
          f'configs/cifar10_scratch.py:{args.preset}', '--workdir', workdir,
          *[f'--config.{k}={v}' for k, v in settings.items()]]


def run_variant(args, name: str) -> dict:
  """Trains one variant (resuming if its workdir has a checkpoint)."""
  what, overrides = VARIANTS[name]
  workdir = os.path.join(args.out, name)
  start = time.monotonic()
  proc = subprocess.run(command(args, overrides, workdir), check=False)
  if proc.returncode:
    raise SystemExit(f'variant {name} failed (exit {proc.returncode}); '
                     f'its log and checkpoints are in {workdir}')
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    lines = [json.loads(line) for line in f]
  final = [m for m in lines if 'accuracy_test' in m][-1]
  rates = [m['img_sec_core_train'] for m in lines if 'img_sec_core_train' in m]
  return {'variant': name, 'change': what, 'images': args.images,
          'steps': final['step'], 'accuracy_test': final['accuracy_test'],
          'loss_test': final['loss_test'],
          'train_loss': [m for m in lines if 'train_loss' in m][-1]['train_loss'],
          'img_per_s': sorted(rates)[len(rates) // 2],
          'wall_seconds': time.monotonic() - start}


def table(results: list[dict]) -> str:
  base = next((r['accuracy_test'] for r in results if r['variant'] == 'base'),
              None)
  rows = ['| variant | change | test acc. | vs base | final train loss '
          '| img/s |', '|---|---|---|---|---|---|']
  for r in results:
    delta = ('' if base is None or r['variant'] == 'base'
             else f"{100 * (r['accuracy_test'] - base):+.1f}")
    rows.append(f"| {r['variant']} | {r['change']} | "
                f"{100 * r['accuracy_test']:.1f}% | {delta} | "
                f"{r['train_loss']:.3f} | {r['img_per_s']:.0f} |")
  return '\n'.join(rows)


def main():
  args = parse_args()
  os.makedirs(args.out, exist_ok=True)
  results_path = os.path.join(args.out, 'results.jsonl')
  results = []
  for name in args.names:
    result = run_variant(args, name)
    results.append(result)
    with open(results_path, 'a') as f:
      f.write(json.dumps(result) + '\n')
    print(f"== {name}: {100 * result['accuracy_test']:.2f}% "
          f"in {result['wall_seconds']:.0f} s", flush=True)
  print(table(results))


if __name__ == '__main__':
  main()
