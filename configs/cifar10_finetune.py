"""Fine-tune ViT-B_16 (ImageNet-21k weights) on CIFAR-10: frozen backbone, then full.

  python -m vit_jax.main --config configs/cifar10_finetune.py --workdir runs/ft
  python -m vit_jax.main --config configs/cifar10_finetune.py:384 --workdir runs/ft384

Needs the ViT-B_16 weights (`python -m vit_jax.hub fetch ViT-B_16`).
Recipe of the original repo (the base config's defaults): SGD momentum 0.9,
base_lr 0.03, warm-up + cosine, global-norm clip 1, batch 512; published
accuracy ~98.9% (224px) / ~99.0% (384px) after 10k steps on TPU. Phase 1 (`freeze_steps`) trains only the head
on the frozen backbone (a linear probe; fast: no backbone gradients), phase 2
trains everything with its own warm-up + cosine. Not yet run to completion
here (needs a GPU/TPU and the real weights): see BENCHMARKS.md.
"""

from configs import common


def get_config(arg=None):
  """arg: None/'224' or '384' (resolution)."""
  config = common.get_config()
  resolution = int(arg or 224)
  if resolution not in (224, 384):
    raise ValueError(f'Resolution must be 224 or 384, got {arg!r}.')
  config.pp.crop = resolution
  config.pp.resize = {224: 256, 384: 448}[resolution]
  config.freeze_steps = 500
  config.accum_steps = 8 if resolution == 384 else 2
  config.model.dtype = 'bfloat16'
  return common.finalize(config)
