"""Logit parity of vit_jax with the original code and with timm (a check, not a test).

Writes a ViT, hybrid or Mixer file in the published vit_jax layout with random values in every
array (via `checkpoint.save`), then computes logits for the same images with
  1. this project (`checkpoint.load` + `models.get_model`),
  2. the original google-research/vision_transformer code (its own
     `checkpoint.load` + the module `models.get_model` would build), and
  3. timm's npz loader (`_load_weights`; hybrids: the ViT one too) with tanh
     and with exact GELU; Mixers, which timm reads from no .npz, from the
     state dict `convert.to_torch_layout` writes,
and prints the max abs and relative (to the largest logit) differences.
With --finetune_size N it compares instead what `checkpoint.load_pretrained`
makes of the file for an N-px model (position embeddings resized, head
taken from the new model) with what the original's load_pretrained makes of
it: the max abs difference over every parameter.
Hybrid files get GroupNorm params of shape (1, 1, 1, C) and pre-linen block
names, as the published R50+ViT-B_16.npz. Peers are not dependencies: point the
script at them.

  git -C <original repo> archive HEAD vit_jax | tar -x -C /tmp/orig
  mv /tmp/orig/vit_jax /tmp/orig/vit_jax_orig  # and rename its own
  # `from vit_jax` imports to vit_jax_orig, or they import this project.
  python benchmarks/check_parity.py --model R50+ViT-B_16 \
      --original_path /tmp/orig:/dir/with/pandas \
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
from vit_jax.configs import models as model_configs

_ORIGINAL = r'''
import sys, json, numpy as np
from vit_jax_orig import checkpoint, models_mixer, models_vit
from vit_jax_orig.configs import models as configs
name, path, images, out = sys.argv[1:5]
x = np.load(images)
params = checkpoint.load(path)
num_classes = params['head']['kernel'].shape[-1]
# What the original's models.get_model does (it imports models_lit too, which
# needs tensorflow_text).
cls = (models_mixer.MlpMixer if name.startswith('Mixer')
       else models_vit.VisionTransformer)
model = cls(num_classes=num_classes, **configs.MODEL_CONFIGS[name])
np.save(out, np.asarray(model.apply({'params': params}, x, train=False)))
'''

_ORIGINAL_FINETUNE = r'''
import sys, numpy as np
from vit_jax_orig import checkpoint
from vit_jax_orig.configs import models as configs
name, path, init, out = sys.argv[1:5]
with np.load(init) as f:
  init_params = checkpoint.recover_tree(list(f.keys()), list(f.values()))
params = checkpoint.load_pretrained(pretrained_path=path,
                                    init_params=init_params,
                                    model_config=configs.MODEL_CONFIGS[name])
flat = {'/'.join(k): np.asarray(v) for k, v in
        __import__('flax').traverse_util.flatten_dict(params).items()}
np.savez(out, **flat)
'''

_TIMM = r'''
import sys, numpy as np, torch, timm
from timm.models.vision_transformer import _load_weights
timm_name, path, images, out, act = sys.argv[1:6]
if path.endswith('.npz'):
  num_classes = np.load(path)['head/kernel'].shape[-1]
else:
  from safetensors.numpy import load_file
  state = load_file(path)
  num_classes = state['head.weight'].shape[0]
kwargs = ({'act_layer': timm.layers.get_act_layer('gelu_tanh')}
          if act == 'tanh' else {})
model = timm.create_model(timm_name, pretrained=False, num_classes=num_classes,
                          **kwargs).eval()
if path.endswith('.npz'):
  _load_weights(model, path)
else:
  model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
x = torch.from_numpy(np.load(images)).permute(0, 3, 1, 2)
with torch.no_grad():
  np.save(out, model(x).numpy())
'''

_TIMM_NAMES = {'ViT-B_16': 'vit_base_patch16_224', 'ViT-Ti_16':
               'vit_tiny_patch16_224', 'ViT-S_16': 'vit_small_patch16_224',
               'ViT-B_32': 'vit_base_patch32_224',
               'R50+ViT-B_16': 'vit_base_r50_s16_224',
               'R26+ViT-S_32': 'vit_small_r26_s32_224',
               'R+ViT-Ti_16': 'vit_tiny_r_s16_p8_224',
               'Mixer-B_16': 'mixer_b16_224', 'Mixer-L_16': 'mixer_l16_224'}


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
  parser.add_argument('--finetune_size', type=int, default=0,
                      help='Compare load_pretrained for this image size.')
  args = parser.parse_args()
  if args.finetune_size:
    return finetune_parity(args)
  model = models.get_model(args.model, args.num_classes)
  size = 224
  params = random_params(model, size)
  tmp = tempfile.mkdtemp()
  path = os.path.join(tmp, f'{args.model}.npz')
  checkpoint.save(params, path)
  timm_path = path
  if model_configs.is_mixer(args.model):  # timm reads Mixers from no .npz.
    timm_path = os.path.join(tmp, f'{args.model}.safetensors')
    checkpoint.save(params, timm_path, layout='timm')
  images = np.random.default_rng(1).uniform(
      -1, 1, (args.batch, size, size, 3)).astype(np.float32)
  np.save(os.path.join(tmp, 'images.npy'), images)
  ours = np.asarray(jax.jit(lambda p, x: model.apply({'params': p}, x))(
      checkpoint.load(path), images))
  scale = float(np.abs(ours).max())
  report = {'model': args.model, 'logit_scale': scale}
  peers = []
  if args.original_path:
    peers.append(('original', sys.executable, _ORIGINAL,
                  [args.model], args.original_path, path))
  if args.timm_python:
    for act in ('tanh', 'exact'):
      peers.append((f'timm_{act}_gelu', args.timm_python, _TIMM,
                    [_TIMM_NAMES[args.model]], None, timm_path, act))
  for name, python, code, first, env_path, file, *act in peers:
    out = os.path.join(tmp, f'{name}.npy')
    run_peer(python, code, [*first, file, os.path.join(tmp, 'images.npy'),
                            out, *act], env_path)
    diff = float(np.abs(np.load(out) - ours).max())
    report[f'max_abs_diff_vs_{name}'] = diff
    report[f'rel_diff_vs_{name}'] = diff / scale
  print(json.dumps(report))


def finetune_parity(args):
  """load_pretrained of a 224px file for an N-px model: ours vs original."""
  if not args.original_path:
    raise SystemExit('--finetune_size needs --original_path.')
  pretrained = models.get_model(args.model, 21843)
  tmp = tempfile.mkdtemp()
  path = os.path.join(tmp, f'{args.model}.npz')
  checkpoint.save(random_params(pretrained, 224), path)
  model = models.get_model(args.model, args.num_classes)
  init = random_params(model, args.finetune_size, seed=1)
  init_path = os.path.join(tmp, 'init.npz')
  np.savez(init_path, **checkpoint.flatten(init))
  ours = checkpoint.flatten(checkpoint.load_pretrained(
      pretrained_path=path, init_params=init,
      model_config=model_configs.MODEL_CONFIGS[args.model]))
  out = os.path.join(tmp, 'original.npz')
  run_peer(sys.executable, _ORIGINAL_FINETUNE,
           [args.model, path, init_path, out], args.original_path)
  with np.load(out) as original:
    theirs = {k: original[k] for k in original.files}
  assert theirs.keys() == ours.keys(), sorted(theirs.keys() ^ ours.keys())
  diffs = {k: float(np.abs(theirs[k] - ours[k]).max()) for k in ours}
  posemb = 'Transformer/posembed_input/pos_embedding'
  print(json.dumps({
      'model': args.model, 'finetune_size': args.finetune_size,
      'parameters': len(diffs), 'max_abs_diff': max(diffs.values()),
      'worst': max(diffs, key=diffs.get),
      'pos_embedding_shape': list(ours[posemb].shape),
      'pos_embedding_max_abs_diff': diffs[posemb]}))


if __name__ == '__main__':
  main()
