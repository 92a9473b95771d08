"""Model configurations: the original repository's names and values, and more.

`MODEL_CONFIGS` maps every image model name of google-research/
vision_transformer (the basenames of its published `.npz` files) to the
ConfigDict its `models.VisionTransformer` / `models.MlpMixer` take as
keyword arguments, and `AUGREG_CONFIGS` maps the AugReg file prefixes
(`B_16`, `R_Ti_16`, ...) to the same configs, exactly as there. The
`get_*_config()` functions return fresh, unlocked copies. (LiT, the
original's text-image models, is out of scope.)

Beyond the original:
  * one table of ViT sizes (`VIT_SIZES`) from which every ViT config is
    built, so any `ViT-<size>_<patch>` name works (`ViT-Ti_4` for 32x32
    CIFAR images) through `model_config`;
  * `model_config(name, **overrides)` takes flat overrides
    (`patch_size=8, num_layers=2, dtype='bfloat16'`) and puts each where the
    original's nested config keeps it;
  * ViT configs carry this project's options, each defaulting to the
    original's behaviour (see `_add_options`).
"""

import difflib
import re
from typing import Any, Optional

import ml_collections
import numpy as np

# Size -> (hidden_size, mlp_dim, num_heads, num_layers): every ViT size.
VIT_SIZES = {
    'Ti': (192, 768, 3, 12),
    'S': (384, 1536, 6, 12),
    'M': (512, 2048, 8, 12),
    'B': (768, 3072, 12, 12),
    'L': (1024, 4096, 16, 24),
    'H': (1280, 5120, 16, 32),
}

_VIT_NAME_RE = re.compile(r'^(?:ViT-)?(?P<size>[A-Za-z]+)[_/](?P<patch>\d+)$')

# Flat override names that live in the nested `transformer` block.
_TRANSFORMER_KEYS = ('mlp_dim', 'num_heads', 'num_layers', 'dropout_rate',
                     'attention_dropout_rate')
CLASSIFIERS = ('token', 'gap', 'unpooled', 'token_unpooled')


def _add_options(config: ml_collections.ConfigDict) -> None:
  """This project's model options; each default is the original's model."""
  config.dtype = 'float32'  # Compute dtype: float32, bfloat16 (parameters stay float32).
  config.attention_impl = 'auto'  # Attention kernel: auto, xla, cudnn or explicit (attention.py).
  config.stochastic_depth = 0.0  # Drop-path rate of the last block (linear in depth).
  config.patch_dropout = 0.0  # Training only: fraction of patch tokens each image drops.
  config.remat = False  # Recompute each block in the backward pass (saves memory).
  config.fp8 = False  # FP8 q/k/v, out and MLP matmuls (fp8.py).


def vit_config(*, model_name: str, hidden_size: int, mlp_dim: int,
               num_heads: int, num_layers: int, patch_size: int,
               dropout_rate: float = 0.0, classifier: str = 'token',
               representation_size: Optional[int] = None
               ) -> ml_collections.ConfigDict:
  """A ViT config in the original's nested form, with this project's options."""
  config = ml_collections.ConfigDict()
  config.model_name = model_name
  config.patches = ml_collections.ConfigDict({'size': (patch_size,
                                                       patch_size)})
  config.hidden_size = hidden_size
  config.transformer = ml_collections.ConfigDict()
  config.transformer.mlp_dim = mlp_dim
  config.transformer.num_heads = num_heads
  config.transformer.num_layers = num_layers
  config.transformer.attention_dropout_rate = 0.0
  config.transformer.dropout_rate = dropout_rate
  config.classifier = classifier
  config.representation_size = representation_size
  _add_options(config)
  return config


def _sized(size: str, patch: int, dropout_rate: float = 0.0, **kwargs):
  hidden, mlp, heads, layers = VIT_SIZES[size]
  return vit_config(model_name=f'ViT-{size}_{patch}', hidden_size=hidden,
                    mlp_dim=mlp, num_heads=heads, num_layers=layers,
                    patch_size=patch, dropout_rate=dropout_rate, **kwargs)


def _renamed(config, model_name: str, **changes):
  config.model_name = model_name
  for key, value in changes.items():
    setattr(config, key, value)
  return config


def _with_resnet(config, model_name: str, patch: int,
                 num_layers: tuple[int, ...]):
  """A hybrid: a ResNet (v2, GroupNorm) stem, then the ViT on its features."""
  config.model_name = model_name
  config.patches.size = (patch, patch)
  config.resnet = ml_collections.ConfigDict()
  config.resnet.num_layers = num_layers
  config.resnet.width_factor = 1
  return config


# ------------------------------------------------- the original's configs


def get_testing_config():
  """A tiny ViT for tests (21,390 parameters with 1,000 classes at 224px)."""
  return vit_config(model_name='testing', hidden_size=10, mlp_dim=10,
                    num_heads=2, num_layers=1, patch_size=16,
                    dropout_rate=0.1)


def get_testing_unpooled_config():
  """The testing ViT without a class token or pooling: logits per patch."""
  return _renamed(get_testing_config(), 'testing-unpooled',
                  classifier='unpooled')


def get_ti16_config():
  return _sized('Ti', 16)


def get_s16_config():
  return _sized('S', 16)


def get_b16_config():
  return _sized('B', 16)


def get_l16_config():
  return _sized('L', 16, dropout_rate=0.1)


def get_h14_config():
  return _sized('H', 14, dropout_rate=0.1)


def get_s16_gap_norep_config():
  return _renamed(get_s16_config(), 'ViT-S_16-gap-norep', classifier='gap')


def get_b16_gap_norep_config():
  return _renamed(get_b16_config(), 'ViT-B_16-gap-norep', classifier='gap')


def get_b8_config():
  return _sized('B', 8)


def get_s32_config():
  return _sized('S', 32)


def get_b32_config():
  return _sized('B', 32)


def get_l32_config():
  return _sized('L', 32)


def get_s32_gap_norep_config():
  return _renamed(get_s32_config(), 'ViT-S_32-gap-norep', classifier='gap')


def get_b32_gap_norep_config():
  return _renamed(get_b32_config(), 'ViT-B_32-gap-norep', classifier='gap')


def get_r_ti16_config():
  """The ResNet root alone (no stages), then 8x8 patches of its features."""
  return _with_resnet(get_ti16_config(), 'R+ViT-Ti_16', 8, ())


def get_r50_b16_config():
  """ResNet-50 stages (3, 4, 9): 2^(1 + 3) = 16x downscaling, 1x1 patches."""
  config = _with_resnet(get_b16_config(), 'R50+ViT-B_16', 1, (3, 4, 9))
  config.transformer.dropout_rate = 0.1
  return config


def get_r26_b32_config():
  return _with_resnet(get_b32_config(), 'R26+ViT-B_32', 1, (2, 2, 2, 2))


def get_r26_s32_config():
  return _with_resnet(get_s16_config(), 'R26+ViT-S_32', 1, (2, 2, 2, 2))


def get_r50_l32_config():
  return _with_resnet(get_l16_config(), 'R50+ViT-L_32', 1, (3, 4, 6, 3))


def _mixer(model_name: str, patch: int, hidden_dim: int, num_blocks: int,
           tokens_mlp_dim: int, channels_mlp_dim: int):
  config = ml_collections.ConfigDict()
  config.model_name = model_name
  config.patches = ml_collections.ConfigDict({'size': (patch, patch)})
  config.hidden_dim = hidden_dim
  config.num_blocks = num_blocks
  config.tokens_mlp_dim = tokens_mlp_dim
  config.channels_mlp_dim = channels_mlp_dim
  return config


def get_mixer_b16_config():
  return _mixer('Mixer-B_16', 16, 768, 12, 384, 3072)


def get_mixer_b32_config():
  return _mixer('Mixer-B_32', 32, 768, 12, 384, 3072)


def get_mixer_l16_config():
  return _mixer('Mixer-L_16', 16, 1024, 24, 512, 4096)


_ORIGINAL_CONFIGS = (
    get_testing_config, get_testing_unpooled_config, get_ti16_config,
    get_s16_config, get_b16_config, get_l16_config, get_h14_config,
    get_s16_gap_norep_config, get_b16_gap_norep_config, get_b8_config,
    get_s32_config, get_b32_config, get_l32_config, get_s32_gap_norep_config,
    get_b32_gap_norep_config, get_r_ti16_config, get_r50_b16_config,
    get_r26_b32_config, get_r26_s32_config, get_r50_l32_config,
    get_mixer_b16_config, get_mixer_b32_config, get_mixer_l16_config)

# Name -> locked config, for every model name of the original repository.
MODEL_CONFIGS = {c.model_name: c.lock() for c in
                 (get_config() for get_config in _ORIGINAL_CONFIGS)}

# Names without AugReg checkpoints (as in the original).
_NOT_AUGREG = ('testing', 'ViT-L_32', 'R50+ViT-B_16', 'ViT-H_14')

# AugReg file prefix ('B_16', 'R_Ti_16', 'R26_S_32', ...) -> locked config.
AUGREG_CONFIGS = {
    name.replace('ViT-', '').replace('+', '_'): config
    for name, config in MODEL_CONFIGS.items()
    if 'Mixer' not in name and name not in _NOT_AUGREG}


# ------------------------------------------------------ beyond the original


def is_mixer(name: str) -> bool:
  return name.startswith('Mixer-')


def model_config(name: str, **overrides) -> ml_collections.ConfigDict:
  """The config of `name`, unlocked, with flat `overrides` applied.

  `name`: a key of MODEL_CONFIGS, or any `ViT-<size>_<patch>` (also
  `<size>/<patch>`) with a size of VIT_SIZES. `overrides` may name top-level
  keys (`classifier`, `dtype`, `transformer`, ...), or, flat, the nested
  ones: `patch_size` (patches.size) and `mlp_dim`, `num_heads`,
  `num_layers`, `dropout_rate`, `attention_dropout_rate` (transformer.*).
  """
  if name in MODEL_CONFIGS:
    config = MODEL_CONFIGS[name].copy_and_resolve_references()
  else:
    config = _parse_vit_name(name)
  for key, value in overrides.items():
    _set(config, key, value, name)
  _check(config)
  return config


def _parse_vit_name(name: str) -> ml_collections.ConfigDict:
  match = _VIT_NAME_RE.match(name or '')
  if not match or match['size'] not in VIT_SIZES:
    raise ValueError(
        f'Unknown model name {name!r}. Use a name of the original repository '
        f'({", ".join(sorted(MODEL_CONFIGS)[:6])}, ...) or '
        f'ViT-<size>_<patch> with size in {sorted(VIT_SIZES)} '
        '(e.g. ViT-B_16, ViT-Ti_4).')
  return _sized(match['size'], int(match['patch']))


def _set(config, key: str, value: Any, name: str) -> None:
  """One flat override, put where the nested config keeps it."""
  if key == 'patch_size':
    config.patches.size = (value, value)
  elif key == 'dtype' and 'dtype' in config:  # Stored by name: jnp.bfloat16 and 'bfloat16' alike.
    config.dtype = value if isinstance(value, str) else np.dtype(value).name
  elif key in _TRANSFORMER_KEYS and 'transformer' in config:
    config.transformer[key] = value
  elif key in config:
    config[key] = value
  else:
    known = sorted(set(config) | {'patch_size'} | (
        set(_TRANSFORMER_KEYS) if 'transformer' in config else set()))
    close = difflib.get_close_matches(key, known, n=3)
    hint = f' Did you mean: {", ".join(close)}?' if close else ''
    raise ValueError(f'Unknown model option {key!r} for {name}.{hint} '
                     f'Known: {", ".join(known)}.')


def _check(config) -> None:
  """Values the modules would only reject when first called."""
  if 'classifier' in config and config.classifier not in CLASSIFIERS:
    raise ValueError(f'classifier must be one of {CLASSIFIERS}, got '
                     f'{config.classifier!r}.')
  if not 0.0 <= config.get('patch_dropout', 0.0) < 1.0:
    raise ValueError('patch_dropout must be in [0, 1), got '
                     f'{config.patch_dropout!r}.')


def name_for(hidden_size: int, num_layers: int, patch_size: int) -> str:
  """The table name of an architecture, e.g. for 'this file fits ViT-B_16'."""
  for size, (hidden, _, _, layers) in VIT_SIZES.items():
    if (hidden, layers) == (hidden_size, num_layers):
      return f'ViT-{size}_{patch_size}'
  return (f'an unnamed ViT (hidden_size={hidden_size}, '
          f'num_layers={num_layers}, patch_size={patch_size})')
