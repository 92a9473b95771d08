"""Parameter-tree layouts: key names, layout detection and the architecture.

The bottom of the parameter-file stack: it knows how the published JAX
layouts name their arrays and reads the architecture off the arrays, but
opens no file (`checkpoint` does) and converts no PyTorch state dict
(`convert` does). Everything here works on flat dicts keyed by '/'-joined
paths.

Layouts `detect_layout` recognises by their keys:
  vit_jax     the original repo's .npz files. ViT: inside each block the
              pre-linen names LayerNorm_0, MultiHeadDotProductAttention_1,
              LayerNorm_2, MlpBlock_3. Hybrids (R50+ViT-B_16, ...): the same,
              plus the ResNet stem conv_root, gn_root,
              block{i}/unit{j}/{conv,gn}{1,2,3}, conv_proj, gn_proj, whose
              GroupNorm scale/bias older flax stored as (1, 1, 1, C). Mixer:
              stem, MixerBlock_{i}/{LayerNorm_0, token_mixing/Dense_{0,1},
              LayerNorm_1, channel_mixing/Dense_{0,1}}, pre_head_layer_norm,
              head (linen names already). Reading renumbers every
              `Name_<n>` per type, as flax's `convert_pre_linen` does in the
              original's `checkpoint.load`, and squeezes those GroupNorm
              params, as its `_fix_groupnorm` does.
  big_vision  optional 'params/' prefix, a top-level 'pos_embedding', per-type
              block names, and optionally the scanned 'Transformer/encoderblock/'
              form whose arrays carry a leading layer axis.
  timm, transformers  PyTorch state dicts; see convert.py.
"""

import dataclasses
import re
from typing import Any, Mapping, Optional

import numpy as np

from vit_jax.configs import models as model_configs

TORCH_LAYOUTS = ('timm', 'transformers')

# Pre-linen (global) numbering inside an encoder block -> linen numbering.
_PRE_LINEN_TO_LINEN = {
    'LayerNorm_0': 'LayerNorm_0',
    'MultiHeadDotProductAttention_1': 'MultiHeadDotProductAttention_0',
    'LayerNorm_2': 'LayerNorm_1',
    'MlpBlock_3': 'MlpBlock_0',
}
_LINEN_TO_PRE_LINEN = {v: k for k, v in _PRE_LINEN_TO_LINEN.items()}
_SCANNED_BLOCK = 'Transformer/encoderblock/'
_BLOCK_RE = re.compile(r'^(Transformer/encoderblock_\d+)/([^/]+)/(.*)$')
_NUMBERED_RE = re.compile(r'^(.*)_(\d+)$')
# GroupNorm params of the ResNet stem: gn_root, gn1..gn3, gn_proj.
_GROUPNORM_RE = re.compile(r'(^|/)gn(\d+|_root|_proj)/(scale|bias)$')
# Keys only the original's hybrid and Mixer files have.
_HYBRID_KEY = 'conv_root/kernel'
_MIXER_PREFIX = 'MixerBlock_'


class CheckpointError(ValueError):
  """A parameter file that cannot be used: says which file and why."""


def flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  """Nested dicts -> 'a/b/c' keys."""
  flat = {}
  for key, value in tree.items():
    path = f'{prefix}{key}'
    if isinstance(value, Mapping):
      flat.update(flatten(value, path + '/'))
    else:
      flat[path] = value
  return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """'a/b/c' keys -> nested dicts."""
  tree = {}
  for key, value in flat.items():
    *parents, leaf = key.split('/')
    node = tree
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def detect_layout(flat: Mapping[str, Any]) -> str:
  """Names the layout of a flat key dict: vit_jax|big_vision|timm|transformers."""
  keys = list(flat)
  if any(k.startswith(('patch_embed.', 'blocks.')) for k in keys):
    return 'timm'
  if any('embeddings.patch_embeddings' in k for k in keys):
    return 'transformers'
  if any('MultiHeadDotProductAttention_1/' in k or k == _HYBRID_KEY
         or k.startswith(_MIXER_PREFIX) for k in keys):
    return 'vit_jax'
  if any(k.startswith(('embedding/', 'params/embedding/')) for k in keys):
    return 'big_vision'
  raise CheckpointError(
      'Unrecognised parameter file layout; first keys: '
      f'{sorted(keys)[:5]}. Expected a ViT, hybrid or Mixer checkpoint from '
      'vit_jax, big_vision, timm or transformers.')


def linen_key(key: str) -> str:
  """One key of the vit_jax / big_vision layouts -> its linen tree path."""
  key = key.removeprefix('params/')
  if key == 'pos_embedding':  # big_vision keeps it at the top level.
    return 'Transformer/posembed_input/pos_embedding'
  return _rename_block_module(key, _PRE_LINEN_TO_LINEN)


def pre_linen_key(key: str) -> str:
  """One linen tree path -> its key in the original vit_jax .npz files."""
  return _rename_block_module(key, _LINEN_TO_PRE_LINEN)


def renumber_modules(flat: Mapping[str, Any]) -> dict[str, Any]:
  """Renumbers `Name_<n>` modules per type at every level (pre-linen -> linen).

  Pre-linen flax numbered a module's children across types (LayerNorm_0,
  MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3); linen numbers
  each type on its own. As flax's `convert_pre_linen`, which the original's
  `checkpoint.load` applies: children are taken in natural order and each
  `Name_<n>` gets the next number of its Name. Linen trees come back as they
  were.
  """
  def rename(tree):
    if not isinstance(tree, Mapping):
      return tree
    out, counts = {}, {}
    for name in sorted(tree, key=_natural_key):
      match = _NUMBERED_RE.match(name)
      new_name = name
      if match:
        module = match.group(1)
        new_name = f'{module}_{counts.get(module, 0)}'
        counts[module] = counts.get(module, 0) + 1
      out[new_name] = rename(tree[name])
    return out
  return flatten(rename(unflatten(flat)))


def _natural_key(name: str):
  """'block10' sorts after 'block9' (digit runs compare as numbers)."""
  return [int(part) if part.isdigit() else part
          for part in re.split(r'(\d+)', name)]


def is_groupnorm_param(key: str) -> bool:
  """Whether a key is a GroupNorm scale/bias of the hybrids' ResNet stem."""
  return bool(_GROUPNORM_RE.search(key))


def squeeze_groupnorm(flat: Mapping[str, Any]) -> dict[str, Any]:
  """GroupNorm params stored as (1, 1, 1, C) by older flax -> (C,).

  What the original's `_fix_groupnorm` does on load (flax 0.3.6 changed
  GroupNorm's param shape; the 2020 hybrid files have the old one).
  """
  return {k: (np.asarray(v).reshape(-1) if is_groupnorm_param(k) else v)
          for k, v in flat.items()}


def published_groupnorm(flat: Mapping[str, Any]) -> dict[str, Any]:
  """Inverse of `squeeze_groupnorm`: (C,) -> (1, 1, 1, C), as published."""
  return {k: (np.asarray(v).reshape(1, 1, 1, -1) if is_groupnorm_param(k)
              else v) for k, v in flat.items()}


def _rename_block_module(key: str, names: Mapping[str, str]) -> str:
  match = _BLOCK_RE.match(key)
  if match:
    block, module, rest = match.groups()
    return f'{block}/{names.get(module, module)}/{rest}'
  return key


def unscan(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Splits big_vision's scanned blocks (leading layer axis) into blocks."""
  out = {}
  for key, value in flat.items():
    bare = key.removeprefix('params/')
    if bare.startswith(_SCANNED_BLOCK):
      rest = bare[len(_SCANNED_BLOCK):]
      for i, layer_value in enumerate(value):
        out[f'Transformer/encoderblock_{i}/{rest}'] = layer_value
    else:
      out[key] = value
  return out


def to_linen_flat(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A JAX layout (vit_jax, big_vision) -> flat dict keyed by linen paths.

  The PyTorch layouts need `convert.from_torch_layout` (and the number of
  heads); `checkpoint.load` picks the right one for a file.
  """
  layout = detect_layout(flat)
  if layout in TORCH_LAYOUTS:
    raise CheckpointError(
        f'A {layout} state dict is not a JAX layout; convert it with '
        'convert.from_torch_layout (checkpoint.load does so for files).')
  renamed = {linen_key(k): v for k, v in unscan(flat).items()}
  return squeeze_groupnorm(renumber_modules(renamed))


# ------------------------------------------------------------- architecture


def heads_for_width(width: int) -> int:
  """Attention heads of the named size of this width (192 -> 3, ...).

  PyTorch files keep q/k/v flattened, so their shapes do not say how the
  width splits into heads; the width of every named size does.
  """
  by_width = {hidden: heads
              for hidden, _, heads, _ in model_configs.VIT_SIZES.values()}
  if width not in by_width:
    raise CheckpointError(
        f'Cannot tell how many attention heads a width-{width} ViT has: '
        'PyTorch files keep q/k/v flattened, so the shapes do not say. '
        f'Known widths: {dict(sorted(by_width.items()))}. Pass num_heads=... '
        '(convert.from_torch_layout, checkpoint.load).')
  return by_width[width]


@dataclasses.dataclass(frozen=True)
class Architecture:
  """What the arrays of a linen-keyed parameter dict say about the model.

  Fields a file may lack (a feature extractor has no head, a damaged file
  no blocks) are None.
  """
  hidden_size: int
  patch_size: int
  num_layers: int
  mlp_dim: Optional[int]
  num_heads: Optional[int]
  classifier: str
  representation_size: Optional[int]
  num_classes: Optional[int]
  image_size: Optional[int]

  @property
  def name(self) -> str:
    """The table name ('ViT-B_16') or a description of an unnamed size."""
    return model_configs.name_for(self.hidden_size, self.num_layers,
                                  self.patch_size)


def read_architecture(flat: Mapping[str, Any]) -> Optional[Architecture]:
  """The architecture of flat linen ViT params; None without a patch
  embedding, and for hybrids and Mixers (`describe` names those)."""
  kernel = flat.get('embedding/kernel')
  if kernel is None or _HYBRID_KEY in flat:
    return None
  patch, width = kernel.shape[0], kernel.shape[-1]
  layers = _count_layers(flat)
  block = 'Transformer/encoderblock_0/'
  query = flat.get(block + 'MultiHeadDotProductAttention_0/query/kernel')
  mlp = flat.get(block + 'MlpBlock_0/Dense_0/kernel')
  posemb = flat.get('Transformer/posembed_input/pos_embedding')
  head = flat.get('head/kernel')
  representation = flat.get('pre_logits/kernel')
  classifier = 'token' if 'cls' in flat else 'gap'
  image_size = None
  if posemb is not None:
    tokens = posemb.shape[1] - (classifier == 'token')
    image_size = int(round(tokens ** 0.5)) * patch
  return Architecture(
      hidden_size=width, patch_size=patch, num_layers=layers,
      mlp_dim=None if mlp is None else mlp.shape[-1],
      num_heads=None if query is None else query.shape[1],
      classifier=classifier,
      representation_size=(None if representation is None
                           else representation.shape[-1]),
      num_classes=None if head is None else head.shape[-1],
      image_size=image_size)


def _count_layers(flat: Mapping[str, Any]) -> int:
  return len({k.split('/')[1] for k in flat
              if k.startswith('Transformer/encoderblock_')})


def _resnet_of(flat: Mapping[str, Any]) -> dict[str, Any]:
  """The `resnet` config of a hybrid's params: units per stage, width."""
  units = {}
  for key in flat:
    match = re.match(r'^block(\d+)/unit(\d+)/', key)
    if match:
      stage, unit = map(int, match.groups())
      units[stage] = max(units.get(stage, 0), unit)
  width = flat[_HYBRID_KEY].shape[-1] / 64
  return {'num_layers': tuple(units[s] for s in sorted(units)),
          'width_factor': int(width) if width == int(width) else width}


def _table_name(matches) -> Optional[str]:
  """The first MODEL_CONFIGS name whose config `matches`, or None."""
  for name, config in model_configs.MODEL_CONFIGS.items():
    if matches(config):
      return name
  return None


def _describe_hybrid(flat: Mapping[str, Any]) -> str:
  resnet = _resnet_of(flat)
  kernel = flat['embedding/kernel']
  found = dict(resnet=resnet, hidden_size=kernel.shape[-1],
               num_layers=_count_layers(flat), patch_size=kernel.shape[0])
  name = _table_name(lambda c: c.get('resnet') is not None
                     and tuple(c.resnet.num_layers) == resnet['num_layers']
                     and c.resnet.width_factor == resnet['width_factor']
                     and c.hidden_size == found['hidden_size']
                     and c.transformer.num_layers == found['num_layers']
                     and c.patches.size[0] == found['patch_size'])
  return name or f'an unnamed ResNet+ViT hybrid ({found})'


def _describe_mixer(flat: Mapping[str, Any]) -> str:
  kernel = flat['stem/kernel']
  blocks = len({k.split('/')[0] for k in flat
                if k.startswith(_MIXER_PREFIX)})
  found = dict(hidden_dim=kernel.shape[-1], num_blocks=blocks,
               patch_size=kernel.shape[0])
  name = _table_name(lambda c: model_configs.is_mixer(c.model_name)
                     and c.hidden_dim == found['hidden_dim']
                     and c.num_blocks == blocks
                     and c.patches.size[0] == found['patch_size'])
  return name or f'an unnamed Mixer ({found})'


def describe(flat: Mapping[str, Any]) -> str:
  """Names the model a flat linen-keyed parameter dict belongs to: a
  MODEL_CONFIGS name ('ViT-B_16', 'R50+ViT-B_16', 'Mixer-B_16') or the
  sizes read off the arrays."""
  if _HYBRID_KEY in flat and 'embedding/kernel' in flat:
    return _describe_hybrid(flat)
  if 'stem/kernel' in flat:
    return _describe_mixer(flat)
  found = read_architecture(flat)
  return ('no known ViT (no embedding/kernel)' if found is None
          else found.name)


def architecture_of(params: Mapping[str, Any], path: str) -> dict[str, Any]:
  """`configs.models.vit_config` arguments, num_classes and image_size of
  a complete classifier.

  For building the model a file was trained as; raises CheckpointError
  naming what is missing when the file is not a whole classifier.
  """
  flat = flatten(params)
  found = read_architecture(flat)
  fields = None if found is None else dataclasses.asdict(found)
  missing = ['embedding/kernel'] if fields is None else [
      name for name, value in fields.items()
      if value is None and name != 'representation_size']
  if _HYBRID_KEY in flat or 'stem/kernel' in flat:
    raise CheckpointError(
        f'{path} holds a {describe(flat)} model, not a plain ViT; build it '
        'by name (models.get_model).')
  if missing or not fields['num_layers']:
    raise CheckpointError(
        f'{path} is not a complete ViT classifier (missing or odd '
        f'{", ".join(missing) or "encoder blocks"}).')
  return fields
