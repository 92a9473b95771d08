"""The model zoo: ViT, ResNet+ViT hybrids and MLP-Mixer, by name.

As in google-research/vision_transformer: `get_model('ViT-B_16',
num_classes=10)` builds the module of `configs.models.MODEL_CONFIGS[name]`,
and the module classes are importable from here. Beyond the original,
`get_model` takes any `ViT-<size>_<patch>` name and flat overrides
(`patch_size=8, num_layers=2, dtype='bfloat16'`; see
`configs.models.model_config`), and this module says which attention kernel
a ViT runs (`attention_plan`) before anything is traced.
"""

import dataclasses
from typing import Optional, Union

import jax

from vit_jax import attention
from vit_jax import models_mixer
from vit_jax import models_vit
from vit_jax.configs import models as model_configs

AddPositionEmbs = models_vit.AddPositionEmbs
MlpBlock = models_vit.MlpBlock
Encoder1DBlock = models_vit.Encoder1DBlock
Encoder = models_vit.Encoder

MlpMixer = models_mixer.MlpMixer
VisionTransformer = models_vit.VisionTransformer

Model = Union[VisionTransformer, MlpMixer]


def get_model(name: str, num_classes: Optional[int] = None,
              **overrides) -> Model:
  """The module of model `name` with `num_classes` outputs (0/None: none).

  `overrides`: the flat options of `configs.models.model_config` (e.g.
  `patch_size=8, num_layers=2`), or module fields (`encoder=...`).
  """
  cls = MlpMixer if model_configs.is_mixer(name) else VisionTransformer
  in_config = set(model_configs.model_config(name))
  fields = {f.name for f in dataclasses.fields(cls)} - in_config
  direct = {k: v for k, v in overrides.items() if k in fields}
  config = model_configs.model_config(
      name, **{k: v for k, v in overrides.items() if k not in fields})
  return cls(num_classes=num_classes, **config, **direct)


def num_tokens(model: VisionTransformer, image_size: int,
               train: bool) -> int:
  """Tokens each block sees: patches (fewer under PatchDropout while
  training), plus the class token."""
  patch = model.patches['size'][0]
  if model.resnet is not None:
    patch *= 4 * 2 ** max(len(model.resnet['num_layers']) - 1, 0)
  patches = (image_size // patch) ** 2
  if train and model.patch_dropout:
    patches = models_vit.kept_patches(patches, model.patch_dropout)
  return patches + model.has_class_token


def attention_plan(model: VisionTransformer, image_size: int, train: bool,
                   backend: Optional[str] = None) -> attention.AttentionPlan:
  """The attention kernel this model uses for `image_size` images: what
  each attention module decides while tracing, for logging it up front.
  `backend` (default: this process's) lets tests ask what a GPU would do."""
  transformer = model.transformer
  needs_weights = train and transformer['attention_dropout_rate'] > 0
  return attention.plan_attention(
      model.attention_impl, backend=backend or jax.default_backend(),
      dtype=model.dtype,
      head_dim=model.hidden_size // transformer['num_heads'],
      length=num_tokens(model, image_size, train), training=train,
      needs_weights=needs_weights,
      probe=attention.probe_on(jax.default_backend()))
