"""Logit parity of vit_jax with the original code and with timm (a check, not a test).

Writes a ViT file in the published vit_jax layout with random values in every
array (via `checkpoint.save`), then computes logits for the same images with
  1. this project (`checkpoint.load` + `models.get_model`),
  2. the original google-research/vision_transformer code (its own
     `checkpoint.load` + `models_vit.VisionTransformer`), and
  3. timm's npz loader (`_load_weights`), with tanh and with exact GELU,
and prints the max abs differences. Peers are not dependencies: point the
script at them.

  python benchmarks/check_parity.py --model ViT-B_16 \
      --original_path /path/to/dir/with/vit_jax_orig \
      --timm_python /path/to/venv-with-timm/bin/python
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import jax
import numpy as np

from vit_jax import checkpoint
from vit_jax import models

_ORIGINAL = r'''
import sys, json, numpy as np
from vit_jax_orig import models_vit, checkpoint
from vit_jax_orig.configs import models as configs
name, path, images, out = sys.argv[1:5]
x = np.load(images)
cfg = configs.MODEL_CONFIGS[name]
params = checkpoint.load(path)
num_classes = params['head']['kernel'].shape[-1]
model = models_vit.VisionTransformer(num_classes=num_classes, **cfg)
np.save(out, np.asarray(model.apply({'params': params}, x, train=False)))
'''

_TIMM = r'''
import sys, numpy as np, torch, timm
from timm.models.vision_transformer import _load_weights
timm_name, path, images, out, act = sys.argv[1:6]
num_classes = np.load(path)['head/kernel'].shape[-1]
kwargs = {'act_layer': 'gelu_tanh'} if act == 'tanh' else {}
model = timm.create_model(timm_name, pretrained=False, num_classes=num_classes,
                          **kwargs).eval()
_load_weights(model, path)
x = torch.from_numpy(np.load(images)).permute(0, 3, 1, 2)
with torch.no_grad():
  np.save(out, model(x).numpy())
'''

_TIMM_NAMES = {'ViT-B_16': 'vit_base_patch16_224', 'ViT-Ti_16':
               'vit_tiny_patch16_224', 'ViT-S_16': 'vit_small_patch16_224',
               'ViT-B_32': 'vit_base_patch32_224'}


def random_params(model, image_size, seed=0, scale=0.05):
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), np.zeros((1, image_size, image_size, 3),
                                  np.float32)))['params']
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: rng.normal(0, scale, s.shape).astype(np.float32), shapes)


def run_peer(python, code, args, env_path=None):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  if env_path:
    env['PYTHONPATH'] = env_path
  subprocess.run([python, '-c', code, *args], check=True, env=env)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='ViT-B_16')
  parser.add_argument('--num_classes', type=int, default=1000)
  parser.add_argument('--batch', type=int, default=2)
  parser.add_argument('--original_path', help='Dir holding vit_jax_orig/.')
  parser.add_argument('--timm_python', help='A python with torch and timm.')
  args = parser.parse_args()
  model = models.get_model(args.model, args.num_classes)
  size = 224
  params = random_params(model, size)
  tmp = tempfile.mkdtemp()
  path = os.path.join(tmp, f'{args.model}.npz')
  checkpoint.save(params, path)
  images = np.random.default_rng(1).uniform(
      -1, 1, (args.batch, size, size, 3)).astype(np.float32)
  np.save(os.path.join(tmp, 'images.npy'), images)
  ours = np.asarray(jax.jit(lambda p, x: model.apply({'params': p}, x))(
      checkpoint.load(path), images))
  report = {'model': args.model, 'logit_scale': float(np.abs(ours).max())}
  peers = []
  if args.original_path:
    peers.append(('original', sys.executable, _ORIGINAL,
                  [args.model], args.original_path))
  if args.timm_python:
    for act in ('tanh', 'exact'):
      peers.append((f'timm_{act}_gelu', args.timm_python, _TIMM,
                    [_TIMM_NAMES[args.model]], None, act))
  for name, python, code, first, env_path, *act in peers:
    out = os.path.join(tmp, f'{name}.npy')
    run_peer(python, code, [*first, path, os.path.join(tmp, 'images.npy'),
                            out, *act], env_path)
    report[f'max_abs_diff_vs_{name}'] = float(np.abs(np.load(out) -
                                                     ours).max())
  print(json.dumps(report))


if __name__ == '__main__':
  main()
