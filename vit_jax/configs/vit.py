r"""Fine-tunes a Vision Transformer (the original repository's config).

Example for fine-tuning a ViT-B/16 on CIFAR10:

python -m vit_jax.main --workdir=/tmp/vit \
    --config=$(pwd)/vit_jax/configs/vit.py:b16,cifar10 \
    --config.pretrained_dir='gs://vit_models/imagenet21k'

`<model>` is the suffix of a `get_<model>_config` in configs/models.py
(testing, ti16, s16, b16, l16, h14, b8, s32, b32, l32, r_ti16, r50_b16, ...);
`<dataset>` a key of common.DATASET_PRESETS. Weights that are not in
`pretrained_dir` are fetched on first use (vit_jax.hub).
"""

from vit_jax.configs import common
from vit_jax.configs import models


def get_config(model_dataset):
  """Returns default parameters for finetuning ViT `model` on `dataset`."""
  model, dataset = model_dataset.split(',')
  config = common.with_dataset(common.get_config(), dataset)
  get_model_config = getattr(models, f'get_{model}_config')
  config.model = get_model_config()

  if model == 'b16' and dataset == 'cifar10':
    config.base_lr = 0.01

  return config
