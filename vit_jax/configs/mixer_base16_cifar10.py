"""Fine-tunes Mixer-B/16 on CIFAR-10 (the original repository's config).

python -m vit_jax.main --workdir=/tmp/mixer \
    --config=$(pwd)/vit_jax/configs/mixer_base16_cifar10.py
"""

from vit_jax.configs import common
from vit_jax.configs import models


def get_config():
  """Returns config for training Mixer-B/16 on cifar10."""
  config = common.get_config()
  config.model_type = 'Mixer'
  config.model = models.get_mixer_b16_config()
  config.dataset = 'cifar10'
  config.total_steps = 10_000
  config.pp = common.pp_config('train[:98%]', 'test', 224)
  return config
