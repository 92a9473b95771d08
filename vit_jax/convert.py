"""Converters between the vit_jax linen tree and PyTorch ViT state dicts.

Both sides are flat dicts of numpy arrays. The linen side is keyed by
'/'-joined tree paths (see `models.py`); the PyTorch side by state-dict names
(timm `VisionTransformer` / transformers `ViTForImageClassification`, whose
names below all start with 'vit.' except `classifier`):

  linen                          timm / transformers
  embedding (p,p,3,D)            patch_embed.proj (D,3,p,p)
                                 / embeddings.patch_embeddings.projection
  cls (1,1,D)                    cls_token / embeddings.cls_token
  Transformer/posembed_input/    pos_embed / embeddings.position_embeddings
    pos_embedding (1,L,D)
  Transformer/encoderblock_{i}/  blocks.{i}. / encoder.layer.{i}.
    LayerNorm_0                  norm1 / layernorm_before
    MultiHeadDotProductAttention_0/
      {query,key,value} (D,H,K)  attn.qkv (3D,D), fused in that order
                                 / attention.attention.{query,key,value} (D,D)
      out (H,K,D)                attn.proj / attention.output.dense (D,D)
    LayerNorm_1                  norm2 / layernorm_after
    MlpBlock_0/Dense_0, Dense_1  mlp.fc1, mlp.fc2
                                 / intermediate.dense, output.dense
  Transformer/encoder_norm       norm / layernorm
  pre_logits (optional)          pre_logits.fc / pooler.dense
  head (optional)                head / classifier

timm also has the hybrids (R50+ViT-B_16 is `vit_base_r50_s16_*`, R26+ViT-S_32
`vit_small_r26_s32_*`, R+ViT-Ti_16 `vit_tiny_r_s16_p8_*`) and the Mixers
(`mixer_b16_224`, ...); their extra modules:

  linen                          timm
  conv_root (7,7,3,W) no bias    patch_embed.backbone.stem.conv (W,3,7,7)
                                 (.backbone.conv without stages: R+ViT-Ti_16)
  gn_root                        patch_embed.backbone.stem.norm (.backbone.norm)
  block{s}/unit{u}/conv{r},gn{r} patch_embed.backbone.stages.{s-1}.blocks.{u-1}.
                                   conv{r}, norm{r}   (r = 1, 2, 3)
    conv_proj, gn_proj           ...downsample.conv, downsample.norm
  stem (p,p,3,D)                 stem.proj (Mixer)
  MixerBlock_{i}/LayerNorm_0     blocks.{i}.norm1
    token_mixing/Dense_{0,1}     mlp_tokens.fc1, fc2
    LayerNorm_1                  norm2
    channel_mixing/Dense_{0,1}   mlp_channels.fc1, fc2
  pre_head_layer_norm            norm

The transformers names are those of its files on the Hub (and of its
`save_pretrained`, also in transformers 5). transformers 5 renames the
modules in memory (`vit.layers.{i}.attention.{q,k,v,o}_proj`, `mlp.fc1/fc2`),
so a `state_dict()` saved directly has those names: they read too, as do bare
`ViTModel` files (no 'vit.' prefix). Export writes the Hub names, which
`from_pretrained` loads in transformers 4 and 5. PyTorch keeps the head
split flattened (timm even fuses q, k and v), so reading needs the number of
heads: it is looked up from the width (`layout.heads_for_width`) unless given.
Every conversion is a transpose, reshape, split or concatenation, so round
trips are bit-identical; leftover keys are an error, never silently dropped.
"""

import dataclasses
import re
from typing import Mapping, Optional

import numpy as np

from vit_jax import layout as tree_layout

LAYOUTS = tree_layout.TORCH_LAYOUTS

# Keys some PyTorch files carry that hold no weights of the classifier.
_IGNORED_KEYS = ('vit.embeddings.mask_token',)  # Masked-image-modelling only.


@dataclasses.dataclass(frozen=True)
class _Names:
  """PyTorch module names of one layout; block names get the block prefix."""
  patch: str
  cls: str
  pos: str
  norm: str
  pre_logits: str
  head: str
  block: str  # Formatted with the block index.
  ln1: str
  query: str
  key: str
  value: str
  out: str
  ln2: str
  fc1: str
  fc2: str


# timm's q/k/v names are virtual: they are the thirds of the fused attn.qkv.
_TIMM = _Names(
    patch='patch_embed.proj', cls='cls_token', pos='pos_embed', norm='norm',
    pre_logits='pre_logits.fc', head='head', block='blocks.{}.',
    ln1='norm1', query='attn.q', key='attn.k', value='attn.v',
    out='attn.proj', ln2='norm2', fc1='mlp.fc1', fc2='mlp.fc2')

_TRANSFORMERS = _Names(
    patch='vit.embeddings.patch_embeddings.projection',
    cls='vit.embeddings.cls_token',
    pos='vit.embeddings.position_embeddings', norm='vit.layernorm',
    pre_logits='vit.pooler.dense', head='classifier',
    block='vit.encoder.layer.{}.', ln1='layernorm_before',
    query='attention.attention.query', key='attention.attention.key',
    value='attention.attention.value', out='attention.output.dense',
    ln2='layernorm_after', fc1='intermediate.dense', fc2='output.dense')

_NAMES = {'timm': _TIMM, 'transformers': _TRANSFORMERS}

# transformers 5's in-memory names -> the names of its files.
_TRANSFORMERS_5_RENAMES = (
    (re.compile(r'^vit\.layers\.(\d+)\.'), r'vit.encoder.layer.\1.'),
    (re.compile(r'\.attention\.q_proj\.'), '.attention.attention.query.'),
    (re.compile(r'\.attention\.k_proj\.'), '.attention.attention.key.'),
    (re.compile(r'\.attention\.v_proj\.'), '.attention.attention.value.'),
    (re.compile(r'\.attention\.o_proj\.'), '.attention.output.dense.'),
    (re.compile(r'\.mlp\.fc1\.'), '.intermediate.dense.'),
    (re.compile(r'\.mlp\.fc2\.'), '.output.dense.'),
)
_LINEN_BLOCK_RE = re.compile(r'^Transformer/encoderblock_(\d+)/')
_TORCH_BLOCK_RE = re.compile(r'^(?:blocks|vit\.encoder\.layer)\.(\d+)\.')
_LINEN_UNIT_RE = re.compile(r'^block(\d+)/unit(\d+)/')
_TIMM_BACKBONE = 'patch_embed.backbone.'
_TIMM_UNIT_RE = re.compile(
    r'^patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.')
_LINEN_MIXER_RE = re.compile(r'^MixerBlock_(\d+)/')
_TIMM_MIXER_STEM = 'stem.proj'


def _modules(names: _Names, num_layers: int):
  """(linen module, torch module, kind) for every module of a plain ViT.

  kind says how the arrays differ: 'param' (one array, same shape), 'norm',
  'dense', 'conv', 'conv_no_bias', 'heads_in' (q/k/v) or 'heads_out'
  (attention output).
  """
  mods = [('embedding', names.patch, 'conv'),
          ('cls', names.cls, 'param'),
          ('Transformer/posembed_input/pos_embedding', names.pos, 'param'),
          ('Transformer/encoder_norm', names.norm, 'norm'),
          ('pre_logits', names.pre_logits, 'dense'),
          ('head', names.head, 'dense')]
  for i in range(num_layers):
    linen, torch = f'Transformer/encoderblock_{i}/', names.block.format(i)
    attn = linen + 'MultiHeadDotProductAttention_0/'
    mods += [(linen + 'LayerNorm_0', torch + names.ln1, 'norm'),
             (attn + 'query', torch + names.query, 'heads_in'),
             (attn + 'key', torch + names.key, 'heads_in'),
             (attn + 'value', torch + names.value, 'heads_in'),
             (attn + 'out', torch + names.out, 'heads_out'),
             (linen + 'LayerNorm_1', torch + names.ln2, 'norm'),
             (linen + 'MlpBlock_0/Dense_0', torch + names.fc1, 'dense'),
             (linen + 'MlpBlock_0/Dense_1', torch + names.fc2, 'dense')]
  return mods


def _resnet_modules(units: Mapping[int, int]):
  """(linen, timm, kind) of a hybrid's ResNet stem; `units`: stage -> count
  (stages numbered from 0). Without stages timm's backbone is the stem."""
  stem = _TIMM_BACKBONE + ('stem.' if units else '')
  mods = [('conv_root', stem + 'conv', 'conv_no_bias'),
          ('gn_root', stem + 'norm', 'norm')]
  for stage in sorted(units):
    for unit in range(units[stage]):
      linen = f'block{stage + 1}/unit{unit + 1}/'
      torch = f'{_TIMM_BACKBONE}stages.{stage}.blocks.{unit}.'
      for r in (1, 2, 3):
        mods += [(f'{linen}conv{r}', f'{torch}conv{r}', 'conv_no_bias'),
                 (f'{linen}gn{r}', f'{torch}norm{r}', 'norm')]
      mods += [(linen + 'conv_proj', torch + 'downsample.conv',
                'conv_no_bias'),
               (linen + 'gn_proj', torch + 'downsample.norm', 'norm')]
  return mods


def _mixer_modules(num_blocks: int):
  """(linen, timm, kind) of an MLP-Mixer (only timm has Mixers)."""
  mods = [('stem', _TIMM_MIXER_STEM, 'conv'),
          ('pre_head_layer_norm', 'norm', 'norm'),
          ('head', 'head', 'dense')]
  for i in range(num_blocks):
    linen, torch = f'MixerBlock_{i}/', f'blocks.{i}.'
    mods += [(linen + 'LayerNorm_0', torch + 'norm1', 'norm'),
             (linen + 'token_mixing/Dense_0', torch + 'mlp_tokens.fc1',
              'dense'),
             (linen + 'token_mixing/Dense_1', torch + 'mlp_tokens.fc2',
              'dense'),
             (linen + 'LayerNorm_1', torch + 'norm2', 'norm'),
             (linen + 'channel_mixing/Dense_0', torch + 'mlp_channels.fc1',
              'dense'),
             (linen + 'channel_mixing/Dense_1', torch + 'mlp_channels.fc2',
              'dense')]
  return mods


def _units(flat: Mapping[str, np.ndarray], unit_re, base: int):
  """Stage (from 0) -> number of units, of a hybrid's ResNet stem."""
  units = {}
  for match in filter(None, map(unit_re.match, flat)):
    stage, unit = int(match.group(1)) - base, int(match.group(2)) - base
    units[stage] = max(units.get(stage, 0), unit + 1)
  return units


def _linen_modules(names: _Names, flat: Mapping[str, np.ndarray],
                   layout: str):
  """The module list for a linen tree: ViT, hybrid or Mixer."""
  if any(_LINEN_MIXER_RE.match(k) for k in flat) or 'stem/kernel' in flat:
    _only_timm(layout, 'MLP-Mixer')
    return _mixer_modules(_count_blocks(flat, _LINEN_MIXER_RE))
  mods = _modules(names, _count_blocks(flat, _LINEN_BLOCK_RE))
  if 'conv_root/kernel' in flat:
    _only_timm(layout, 'ResNet+ViT hybrid')
    mods += _resnet_modules(_units(flat, _LINEN_UNIT_RE, 1))
  return mods


def _torch_modules(names: _Names, state: Mapping[str, np.ndarray],
                   layout: str):
  """The module list for a PyTorch state dict: ViT, hybrid or Mixer."""
  if layout == 'timm' and _TIMM_MIXER_STEM + '.weight' in state:
    return _mixer_modules(_count_blocks(state, _TORCH_BLOCK_RE))
  mods = _modules(names, _count_blocks(state, _TORCH_BLOCK_RE))
  if layout == 'timm' and any(k.startswith(_TIMM_BACKBONE) for k in state):
    mods += _resnet_modules(_units(state, _TIMM_UNIT_RE, 0))
  return mods


def _only_timm(layout: str, what: str):
  if layout != 'timm':
    raise ValueError(f'A {what} has no {layout} layout; use timm.')


# Modules a file may lack: gap models have no class token; feature
# extractors no head; most fine-tuned models no pre_logits; only the first
# unit of a ResNet stage projects its input.
_OPTIONAL = ('cls', 'pre_logits', 'head', 'conv_proj', 'gn_proj')


def _is_optional(linen: str) -> bool:
  return linen.rpartition('/')[2] in _OPTIONAL


def _check_layout(layout: str) -> _Names:
  if layout not in _NAMES:
    raise ValueError(f'Unknown PyTorch layout {layout!r}; use one of '
                     f'{LAYOUTS}.')
  return _NAMES[layout]


def to_torch_layout(flat_linen: Mapping[str, np.ndarray],
                    layout: str) -> dict[str, np.ndarray]:
  """Flat linen params -> a timm or transformers state dict (numpy arrays).

  For export: the result is what `VisionTransformer.load_state_dict` (timm)
  or `ViTForImageClassification.load_state_dict` (transformers) expects. Note
  transformers' classifier has no pooler in front, so a model with
  `pre_logits` computes different logits there (its pooler is written anyway,
  so that the file reads back unchanged).
  """
  names = _check_layout(layout)
  flat = {k: np.asarray(v) for k, v in flat_linen.items()}
  state = {}
  for linen, torch, kind in _linen_modules(names, flat, layout):
    if _is_optional(linen) and not _has_module(flat, linen, '/'):
      continue
    for suffix, array in _linen_to_torch(flat, linen, kind).items():
      state[torch + suffix] = np.ascontiguousarray(array)
  _raise_on_leftovers(flat, layout, 'linen tree')
  return _fuse_qkv(state) if layout == 'timm' else state


def from_torch_layout(flat: Mapping[str, np.ndarray], layout: str,
                      num_heads: Optional[int] = None
                      ) -> dict[str, np.ndarray]:
  """A timm or transformers state dict -> flat linen params.

  `num_heads` is needed only for widths of no named size: the PyTorch files
  do not record how the width splits into heads.
  """
  names = _check_layout(layout)
  state = {k: np.asarray(v) for k, v in flat.items()}
  if layout == 'timm':
    state = _split_qkv(state)
  else:
    state = _file_names(_add_vit_prefix(state))
    for key in _IGNORED_KEYS:
      state.pop(key, None)
  patch = names.patch + '.weight'
  is_mixer = layout == 'timm' and _TIMM_MIXER_STEM + '.weight' in state
  if patch not in state and not is_mixer:
    raise tree_layout.CheckpointError(
        f'Not a {layout} ViT state dict: no {names.patch}.weight; first keys: '
        f'{sorted(state)[:5]}.')
  heads = None if is_mixer else _num_heads(state[patch].shape[0], num_heads)
  linen_flat = {}
  for linen, torch, kind in _torch_modules(names, state, layout):
    if _is_optional(linen) and not _has_module(state, torch, '.'):
      continue
    for suffix, array in _torch_to_linen(state, torch, kind, heads).items():
      linen_flat[linen + suffix] = np.ascontiguousarray(array)
  _raise_on_leftovers(state, layout, f'{layout} state dict')
  return linen_flat


def _num_heads(width: int, num_heads: Optional[int]) -> int:
  """Heads from the argument, else from the width of a known model size."""
  if num_heads is None:
    num_heads = tree_layout.heads_for_width(width)
  if width % num_heads:
    raise tree_layout.CheckpointError(
        f'num_heads={num_heads} does not divide the width {width}.')
  return num_heads


def _linen_to_torch(flat, module: str, kind: str) -> dict[str, np.ndarray]:
  """Pops one linen module's arrays; returns them by torch key suffix."""
  if kind == 'param':
    return {'': flat.pop(module)}
  if kind == 'norm':
    return {'.weight': flat.pop(module + '/scale'),
            '.bias': flat.pop(module + '/bias')}
  if kind == 'conv_no_bias':  # HWIO -> OIHW.
    return {'.weight': flat.pop(module + '/kernel').transpose(3, 2, 0, 1)}
  kernel, bias = flat.pop(module + '/kernel'), flat.pop(module + '/bias')
  if kind == 'conv':  # (p,p,3,D) HWIO -> (D,3,p,p) OIHW.
    weight = kernel.transpose(3, 2, 0, 1)
  elif kind == 'dense':  # (in,out) -> torch Linear's (out,in).
    weight = kernel.T
  elif kind == 'heads_in':  # (D,H,K) -> (H*K,D).
    weight, bias = kernel.reshape(kernel.shape[0], -1).T, bias.reshape(-1)
  else:  # heads_out: (H,K,D) -> (D,H*K).
    weight = kernel.reshape(-1, kernel.shape[-1]).T
  return {'.weight': weight, '.bias': bias}


def _torch_to_linen(state, module: str, kind: str,
                    heads: int) -> dict[str, np.ndarray]:
  """Pops one torch module's arrays; returns them by linen key suffix."""
  try:
    if kind == 'param':
      return {'': state.pop(module)}
    if kind == 'conv_no_bias':  # OIHW -> HWIO.
      return {'/kernel': state.pop(module + '.weight').transpose(2, 3, 1, 0)}
    weight, bias = state.pop(module + '.weight'), state.pop(module + '.bias')
  except KeyError as e:
    raise tree_layout.CheckpointError(
        f'The state dict lacks {e.args[0]!r}; is it a plain ViT?') from None
  if kind == 'norm':
    return {'/scale': weight, '/bias': bias}
  if kind == 'conv':  # (D,3,p,p) OIHW -> (p,p,3,D) HWIO.
    kernel = weight.transpose(2, 3, 1, 0)
  elif kind == 'dense':
    kernel = weight.T
  elif kind == 'heads_in':  # (H*K,D) -> (D,H,K).
    kernel = weight.T.reshape(weight.shape[1], heads, -1)
    bias = bias.reshape(heads, -1)
  else:  # heads_out: (D,H*K) -> (H,K,D).
    kernel = weight.T.reshape(heads, -1, weight.shape[0])
  return {'/kernel': kernel, '/bias': bias}


def _split_qkv(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """timm's fused attn.qkv (3D,...) -> virtual attn.q/k/v, in that order."""
  out = {}
  for key, value in state.items():
    prefix, fused, suffix = key.rpartition('attn.qkv.')
    if fused:
      for part, third in zip('qkv', np.split(value, 3, axis=0)):
        out[f'{prefix}attn.{part}.{suffix}'] = third
    else:
      out[key] = value
  return out


def _fuse_qkv(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Inverse of `_split_qkv`, keeping the state dict's key order."""
  out = {}
  for key, value in state.items():
    prefix, part, suffix = key.rpartition('attn.q.')
    if part:
      out[f'{prefix}attn.qkv.{suffix}'] = np.concatenate(
          [state[f'{prefix}attn.{p}.{suffix}'] for p in 'qkv'], axis=0)
    elif not re.search(r'attn\.[kv]\.', key):
      out[key] = value
  return out


def _add_vit_prefix(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A bare ViTModel's keys -> ViTForImageClassification's 'vit.' keys."""
  if any(k.startswith('vit.') for k in state):
    return dict(state)
  return {(k if k.startswith('classifier.') else 'vit.' + k): v
          for k, v in state.items()}


def _file_names(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """transformers 5 `state_dict()` names -> the names in its files."""
  out = {}
  for key, value in state.items():
    for pattern, replacement in _TRANSFORMERS_5_RENAMES:
      key = pattern.sub(replacement, key)
    out[key] = value
  return out


def _count_blocks(flat: Mapping[str, np.ndarray], block_re) -> int:
  """Number of encoder blocks; indices must run 0..n-1 without gaps."""
  indices = {int(m.group(1)) for m in map(block_re.match, flat) if m}
  if indices != set(range(len(indices))):
    raise tree_layout.CheckpointError(
        f'Encoder block indices {sorted(indices)} are not 0..n-1.')
  return len(indices)


def _has_module(flat: Mapping[str, np.ndarray], module: str, sep: str):
  return module in flat or any(k.startswith(module + sep) for k in flat)


def _raise_on_leftovers(remaining: Mapping[str, np.ndarray], layout: str,
                        what: str):
  """Keys no rule consumed mean a model variant we would convert wrongly."""
  if remaining:
    keys = sorted(remaining)
    raise tree_layout.CheckpointError(
        f'{len(keys)} key(s) of the {what} have no {layout} counterpart: '
        f'{keys[:8]}. This converter handles the plain ViT (class token or '
        'gap, no fc_norm / layer scale / registers).')
