"""Fake pretrained checkpoints for tests (the original's `test_utils`).

The original's tests call `create_checkpoint(model_config, path)` and then
fine-tune from `path`; it is here so that they run unchanged.
"""

import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import layout
from vit_jax import models


def create_checkpoint(model_config: Mapping[str, Any], path: str):
  """Initialises `models.VisionTransformer(num_classes=1, **model_config)`
  on one 16x16 image (PRNGKey(0)) and saves its params to the .npz `path`.

  As the original: keys are the '/'-joined linen paths (not the pre-linen
  names of the published files), in sorted order; the folder is created.
  """
  model = models.VisionTransformer(num_classes=1, **model_config)
  variables = model.init(jax.random.PRNGKey(0),
                         jnp.ones([1, 16, 16, 3], jnp.float32), train=False)
  flat = layout.flatten(variables['params'])
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    np.savez(f, **{k: np.asarray(flat[k]) for k in sorted(flat)})
