r"""Fine-tunes a Vision Transformer / hybrid from an AugReg checkpoint.

(The original repository's config.) Example for fine-tuning R+Ti/16 on
oxford_iiit_pet:

python -m vit_jax.main --workdir=/tmp/vit \
    --config=$(pwd)/vit_jax/configs/augreg.py:R_Ti_16 \
    --config.dataset=oxford_iiit_pet \
    --config.pp.train='train[:90%]' \
    --config.base_lr=0.01

By default the best i21k pre-trained checkpoint by upstream validation
accuracy is chosen (from `index.csv` in `pretrained_dir`). A file can be
named in full (without ".npz"):

python -m vit_jax.main --workdir=/tmp/vit \
    --config=$(pwd)/vit_jax/configs/augreg.py:R_Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0 \
    --config.dataset=oxford_iiit_pet \
    --config.pp.train='train[:90%]' \
    --config.base_lr=0.01
"""

from vit_jax.configs import common
from vit_jax.configs import models


def get_config(model_or_filename):
  """Returns default parameters for finetuning ViT `model` on `dataset`."""
  config = common.get_config()

  config.pretrained_dir = 'gs://vit_models/augreg'

  config.model_or_filename = model_or_filename
  model = model_or_filename.split('-')[0]
  if model not in models.AUGREG_CONFIGS:
    raise ValueError(f'Unknown Augreg model "{model}"'
                     f'- not found in {set(models.AUGREG_CONFIGS.keys())}')
  config.model = models.AUGREG_CONFIGS[model].copy_and_resolve_references()
  config.model.transformer.dropout_rate = 0  # No AugReg during fine-tuning.

  # These values are often overridden on the command line.
  config.base_lr = 0.03
  config.total_steps = 500
  config.warmup_steps = 100
  config.pp = common.pp_config('train', 'test', 384)
  config.pp.resize = 448

  # This value MUST be overridden on the command line.
  config.dataset = ''

  return config
