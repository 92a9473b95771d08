"""The fine-tuning config end to end on a synthetic ViT-B_16.npz.

  python benchmarks/finetune_smoke.py --tfds_data_dir ../shared/data/tensorflow_datasets
  python benchmarks/finetune_smoke.py --dataset synthetic --resolution 384 \
      --batch 32 --freeze_steps 10 --total_steps 40          # on a GPU

The real ImageNet-21k file cannot be downloaded everywhere, so this writes
one with random values under the published names and shapes (pre_logits 768
and a 21843-class head, as `imagenet21k/ViT-B_16.npz`), runs
`python -m vit_jax.main --config configs/cifar10_finetune.py[:384]` for a few
steps at a reduced batch, and checks from the orbax checkpoints that the
frozen phase left the backbone bit-identical and that the full phase then
moved every backbone array that has a gradient (the attention key biases
have none: softmax ignores them). A non-finite loss stops the run, and so
fails the check. `--tiny` shrinks width and depth for a CPU rehearsal.
"""

import argparse
import os
import subprocess
import sys
import tempfile

import jax
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image

from vit_jax import checkpoint
from vit_jax import models
from vit_jax import recovery

TINY = dict(hidden_size=64, mlp_dim=64, num_heads=2, num_layers=1)


def synthetic_vit_b16(folder: str, overrides: dict, std: float) -> dict:
  model = models.get_model('ViT-B_16', 21843, representation_size=768,
                           **overrides)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), np.zeros((1, 224, 224, 3), np.float32)))['params']
  rng = np.random.default_rng(0)
  params = jax.tree.map(
      lambda s: rng.normal(0, std, s.shape).astype(np.float32), shapes)
  checkpoint.save(params, os.path.join(folder, 'ViT-B_16.npz'))
  return checkpoint.flatten(params)


def synthetic_images(root: str, classes: int = 10, per_class: int = 8) -> str:
  """A {train,test}/<class>/*.png folder of 32x32 class-coloured noise."""
  rng = np.random.default_rng(0)
  for split in ('train', 'test'):
    for c in range(classes):
      folder = os.path.join(root, split, f'class_{c}')
      os.makedirs(folder, exist_ok=True)
      for i in range(per_class):
        image = rng.integers(0, 64, (32, 32, 3)) + 19 * c
        Image.fromarray(image.astype(np.uint8)).save(
            os.path.join(folder, f'{i}.png'))
  return root


def restored_params(workdir: str, step: int) -> dict:
  """The parameters in the run's checkpoint of `step` (wherever the run's
  layout puts it: recovery.layout_for)."""
  path = os.path.join(recovery.layout_for(workdir).step_path(step), 'default')
  state = ocp.StandardCheckpointer().restore(path)
  return checkpoint.flatten(jax.tree.map(np.asarray, state['params']))


def main_command(args, pretrained_dir: str, dataset: str, workdir: str):
  config = 'configs/cifar10_finetune.py' + (
      f':{args.resolution}' if args.resolution != 224 else '')
  command = [
      sys.executable, '-m', 'vit_jax.main', '--config', config,
      '--workdir', workdir, f'--config.pretrained_dir={pretrained_dir}',
      f'--config.dataset={dataset}',
      f'--config.batch={args.batch}', f'--config.accum_steps={args.accum}',
      f'--config.batch_eval={args.batch}',
      f'--config.total_steps={args.total_steps}',
      f'--config.freeze_steps={args.freeze_steps}',
      '--config.warmup_steps=1', f'--config.pp.test={args.test_split}',
      f'--config.checkpoint_every={args.freeze_steps}',
      f'--config.keep_checkpoints={args.total_steps // args.freeze_steps + 1}',
      f'--config.eval_every={args.total_steps}',
      f'--config.progress_every={args.freeze_steps}']
  if args.tfds_data_dir:
    command.append(f'--config.tfds_data_dir={args.tfds_data_dir}')
  if args.tiny:
    command += ['--config.model.hidden_size=64',
                *(f'--config.model.transformer.{k}={v}' for k, v in
                  TINY.items() if k != 'hidden_size')]
  return command


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--dataset', default='cifar10',
                      help="tfds name, image folder, or 'synthetic'.")
  parser.add_argument('--tfds_data_dir', default=None)
  parser.add_argument('--resolution', type=int, choices=(224, 384),
                      default=224)
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--accum', type=int, default=2)
  parser.add_argument('--freeze_steps', type=int, default=2)
  parser.add_argument('--total_steps', type=int, default=4)
  parser.add_argument('--test_split', default='test[:16]')
  parser.add_argument('--tiny', action='store_true')
  parser.add_argument('--workdir', default=None)
  args = parser.parse_args()
  if args.total_steps % args.freeze_steps:
    parser.error('--total_steps must be a multiple of --freeze_steps.')
  tmp = tempfile.mkdtemp()
  workdir = args.workdir or os.path.join(tmp, 'run')
  dataset = (synthetic_images(os.path.join(tmp, 'data'))
             if args.dataset == 'synthetic' else args.dataset)
  # Tiny widths need larger weights for attention logits that bfloat16 can
  # tell apart (else the query and key gradients round to zero).
  pretrained = synthetic_vit_b16(tmp, TINY if args.tiny else {},
                                 std=0.2 if args.tiny else 0.02)
  command = main_command(args, tmp, dataset, workdir)
  print(' '.join(command), flush=True)
  subprocess.run(command, check=True)
  frozen = restored_params(workdir, args.freeze_steps)
  full = restored_params(workdir, args.total_steps)
  backbone = [k for k in pretrained if k.split('/')[0] not in
              ('head', 'pre_logits')]
  assert 'pre_logits/kernel' not in frozen  # representation_size is None.
  posemb = 'Transformer/posembed_input/pos_embedding'
  pretrained[posemb] = checkpoint.interpolate_posembed(  # As loading does.
      pretrained[posemb], frozen[posemb].shape[1], True)
  identical = all(frozen[k].tobytes() == pretrained[k].tobytes()
                  for k in backbone)
  moved = [k for k in backbone if not np.array_equal(full[k], frozen[k])]
  unmoved = sorted(set(backbone) - set(moved))
  print(f'frozen phase (step {args.freeze_steps}): {len(backbone)} backbone '
        f'arrays bit-identical to the file: {identical}')
  print(f'full phase (step {args.total_steps}): {len(moved)} of '
        f'{len(backbone)} backbone arrays moved')
  print('unmoved:', unmoved)
  assert identical, 'the frozen phase changed the backbone'
  assert unmoved and all(k.endswith('key/bias') for k in unmoved), unmoved
  print('OK')


if __name__ == '__main__':
  main()
