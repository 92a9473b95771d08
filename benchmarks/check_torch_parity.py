"""Logit parity with timm and transformers through safetensors files (a check).

Both conversion directions, at ViT-B/16 224px, 10 classes:
  import  a timm `vit_base_patch16_224` and a transformers
          `ViTForImageClassification` (random init) saved as .safetensors load
          via `checkpoint.load` with the same logits as in those libraries;
  export  our params written by `checkpoint.save(..., layout='timm')` (and
          'transformers') load in those libraries with our logits (timm:
          `load_state_dict(strict=True)`; transformers: `from_pretrained` of
          config.json + the file, no missing or unexpected keys).
Transformers files are read both as `save_pretrained` writes them (the Hub
names) and as `save_file(model.state_dict())` (transformers 5's new names).
The libraries use exact GELU and we use the tanh form, so logits agree to
about 1e-3 of their scale; the bar is 2e-3 of the logit scale (max |logit|).

The torch side runs in another interpreter (torch is no dependency), the two
exchanging files in a temporary folder:

  python benchmarks/check_torch_parity.py \
      --torch_python /path/to/venv-with-torch-timm-transformers/bin/python
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

_TOLERANCE = 2e-3  # Of the logit scale.
_CLASSES = 10

# Runs under --torch_python: makes the torch models, reads our exports.
_TORCH_SIDE = r'''
import json, os, sys
import numpy as np, torch, timm, transformers
from safetensors.torch import load_file, save_file
torch.manual_seed(0)
torch.set_num_threads(2)
folder, classes = sys.argv[1], int(sys.argv[2])
images = np.load(os.path.join(folder, 'images.npy'))
images = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())  # NCHW.
at = lambda name: os.path.join(folder, name)
config = transformers.ViTConfig(num_labels=classes)  # ViT-B/16 224 defaults.

def logits(model, name):
  with torch.no_grad():
    out = model(images)
  out = out if torch.is_tensor(out) else out.logits
  np.save(at(name + '_logits.npy'), out.numpy())

def save_state(model, name):
  state = model.state_dict()
  save_file({k: v.contiguous() for k, v in state.items()}, at(name))

# Import: random-init models saved as safetensors for the jax side.
model = timm.create_model('vit_base_patch16_224', num_classes=classes).eval()
save_state(model, 'timm.safetensors')
logits(model, 'timm')
model = transformers.ViTForImageClassification(config).eval()
save_state(model, 'transformers_state_dict.safetensors')  # In-memory names.
model.save_pretrained(at('transformers_pretrained'))  # Hub / file names.
logits(model, 'transformers')

# Export: our files, loaded the way users would.
model = timm.create_model('vit_base_patch16_224', num_classes=classes).eval()
model.load_state_dict(load_file(at('export_timm.safetensors')), strict=True)
logits(model, 'export_timm')
os.makedirs(at('export_transformers'))
config.save_pretrained(at('export_transformers'))
os.replace(at('export_transformers.safetensors'),
           at('export_transformers/model.safetensors'))
model, info = transformers.ViTForImageClassification.from_pretrained(
    at('export_transformers'), output_loading_info=True)
assert not any(info.values()), info  # No missing / unexpected keys.
logits(model.eval(), 'export_transformers')
print(json.dumps(dict(torch=torch.__version__, timm=timm.__version__,
                      transformers=transformers.__version__)))
'''


def _our_params(seed):
  """ViT-B_16 params with random values everywhere (our head starts at 0)."""
  import jax  # pylint: disable=g-import-not-at-top
  from vit_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from vit_jax import models  # pylint: disable=g-import-not-at-top
  model = models.get_model('ViT-B_16', _CLASSES)
  params = model.init(jax.random.PRNGKey(seed),
                      np.zeros((1, 224, 224, 3), np.float32))['params']
  rng = np.random.default_rng(seed)
  flat = {k: np.asarray(v) + rng.normal(0, 0.02, v.shape).astype(np.float32)
          for k, v in checkpoint.flatten(params).items()}
  return model, checkpoint.unflatten(flat)


def _logits(model, params, images):
  return np.asarray(model.apply({'params': params}, images))


def _compare(name, ours, theirs):
  scale = float(np.abs(theirs).max())
  diff = float(np.abs(ours - theirs).max())
  ok = diff <= _TOLERANCE * scale
  print(f'{name:<40} max|diff| {diff:.3e}  logit scale {scale:.3e}  '
        f'ratio {diff / scale:.2e}  {"OK" if ok else "FAIL"}')
  return dict(max_abs_diff=diff, logit_scale=scale, ok=ok)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--torch_python', required=True,
                      help='an interpreter with torch, timm, transformers')
  parser.add_argument('--batch', type=int, default=2)
  args = parser.parse_args()
  from vit_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from vit_jax import models  # pylint: disable=g-import-not-at-top
  images = np.random.default_rng(1).uniform(
      -1, 1, (args.batch, 224, 224, 3)).astype(np.float32)
  results = {}
  with tempfile.TemporaryDirectory() as folder:
    np.save(os.path.join(folder, 'images.npy'), images)
    model, params = _our_params(seed=0)
    for library in ('timm', 'transformers'):
      checkpoint.save(params, os.path.join(folder,
                                           f'export_{library}.safetensors'),
                      layout=library)
    ours = _logits(model, params, images)
    run = subprocess.run([args.torch_python, '-c', _TORCH_SIDE, folder,
                          str(_CLASSES)], capture_output=True, text=True,
                         check=False)
    if run.returncode:
      sys.exit(f'torch side failed:\n{run.stderr}')
    print('versions:', run.stdout.strip().splitlines()[-1])
    load = lambda f: np.load(os.path.join(folder, f))
    b16 = models.get_model('ViT-B_16', _CLASSES)
    imports = [('timm', 'timm.safetensors'),
               ('transformers', 'transformers_pretrained/model.safetensors'),
               ('transformers', 'transformers_state_dict.safetensors')]
    for library, file in imports:
      loaded = checkpoint.load(os.path.join(folder, file))
      results[f'import {file}'] = _compare(
          f'{file} -> vit_jax', _logits(b16, loaded, images),
          load(f'{library}_logits.npy'))
    for library in ('timm', 'transformers'):
      results[f'export {library}'] = _compare(
          f'vit_jax -> {library}', ours, load(f'export_{library}_logits.npy'))
  print(json.dumps(results, indent=1))
  sys.exit(0 if all(r['ok'] for r in results.values()) else 1)


if __name__ == '__main__':
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))))
  main()
