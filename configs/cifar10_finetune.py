"""Fine-tune ViT-B_16 (ImageNet-21k weights) on CIFAR-10: frozen backbone, then full.

  python -m vit_jax.main --config configs/cifar10_finetune.py --workdir runs/ft
  python -m vit_jax.main --config configs/cifar10_finetune.py:384 --workdir runs/ft384
  python -m vit_jax.main --config configs/cifar10_finetune.py:384,model=ViT-L_16 --workdir runs/l16

Needs the weights of the model (`python -m vit_jax.hub fetch ViT-B_16`;
fetched on first use). The original repository's recipe (its base config,
vit_jax/configs/common.py): SGD momentum 0.9 (bfloat16 state), base_lr 0.03,
warm-up + cosine, global-norm clip 1, batch 512; published accuracy ~98.9%
(224px) / ~99.0% (384px) after 10k steps on TPU. Phase 1 (`freeze_steps`)
trains only the head on the frozen backbone (a linear probe; fast: no
backbone gradients), phase 2 trains everything with its own warm-up +
cosine. Not yet run to completion here (needs a GPU/TPU and the real
weights): see BENCHMARKS.md.
"""

from vit_jax.configs import common
from vit_jax.configs import models


def _parse(arg):
  """'384' or 'res=384,model=ViT-L_16' -> (resolution, model name)."""
  options = {'res': '224', 'model': 'ViT-B_16'}
  for token in filter(None, (arg or '').split(',')):
    key, _, value = token.rpartition('=')
    options[key or 'res'] = value
  unknown = set(options) - {'res', 'model'}
  if unknown:
    raise ValueError(f'Unknown config argument(s) {sorted(unknown)}; use '
                     '[res=]224|384 and model=NAME.')
  resolution = int(options['res'])
  if resolution not in (224, 384):
    raise ValueError(f'Resolution must be 224 or 384, got {resolution}.')
  return resolution, options['model']


def get_config(arg=None):
  """arg: '224' (default) or '384', and optionally model=NAME."""
  resolution, model_name = _parse(arg)
  config = common.get_config()
  config.model = models.model_config(model_name, dtype='bfloat16')
  config.dataset = 'cifar10'
  config.pretrained_dir = 'checkpoints'
  config.pp = common.pp_config('train[:98%]', 'test', resolution)
  config.pp.resize = {224: 256, 384: 448}[resolution]
  config.total_steps = 10_000
  config.freeze_steps = 500
  config.accum_steps = 8 if resolution == 384 else 2
  config.eval_every = 1_000
  config.progress_every = 100
  return config
