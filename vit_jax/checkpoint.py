"""Reading and writing ViT parameter files in the published layouts.

Layouts `load` recognises by their keys:
  vit_jax     the original repo's .npz files ('/'-joined keys; inside each block
              the pre-linen names LayerNorm_0, MultiHeadDotProductAttention_1,
              LayerNorm_2, MlpBlock_3). `save` writes this layout, so our files
              load in the original code, big_vision and timm.
  big_vision  optional 'params/' prefix, a top-level 'pos_embedding', per-type
              block names, and optionally the scanned 'Transformer/encoderblock/'
              form whose arrays carry a leading layer axis.
  timm, transformers  PyTorch state dicts (usually .safetensors); see convert.py.

Every layout ends up as the in-memory tree of `models.VisionTransformer`.
"""

import os
import re
import tempfile
import zipfile
from typing import Any, Mapping

import numpy as np

from vit_jax import models

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
FETCH_HINT = ('Get it with `python -m vit_jax.checkpoint fetch {name}` '
              '(tries the original bucket, then the Hugging Face Hub), or put '
              'the file there by hand (see checkpoints/README.md).')


class CheckpointError(ValueError):
  """A parameter file that cannot be used: says which file and why."""


def _open(path: str):
  """Opens local or remote (gs://, https via etils) paths for reading."""
  if '://' in str(path):
    from etils import epath  # pylint: disable=g-import-not-at-top
    return epath.Path(path).open('rb')
  return open(path, 'rb')


def _exists(path: str) -> bool:
  if '://' in str(path):
    from etils import epath  # pylint: disable=g-import-not-at-top
    return epath.Path(path).exists()
  return os.path.exists(path)


def read_flat(path: str) -> dict[str, np.ndarray]:
  """Reads a .npz or .safetensors file into a flat {key: array} dict."""
  path = os.fspath(path)
  if not _exists(path):
    name = os.path.splitext(os.path.basename(path))[0]
    raise FileNotFoundError(
        f'No parameter file at {path!r}. ' + FETCH_HINT.format(name=name))
  with _open(path) as f:
    data = f.read()
  if path.endswith('.safetensors'):
    return _read_safetensors(path, data)
  return _read_npz(path, data)


def _read_npz(path: str, data: bytes) -> dict[str, np.ndarray]:
  import io  # pylint: disable=g-import-not-at-top
  try:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
      return {k: npz[k] for k in npz.files}
  except ValueError as e:
    if 'allow_pickle' in str(e):
      raise CheckpointError(
          f'{path} holds pickled objects; refusing to unpickle it (that can '
          'run arbitrary code). Parameter files must hold plain arrays.'
      ) from None
    raise CheckpointError(f'{path} is not a readable .npz file: {e}') from None
  except (zipfile.BadZipFile, EOFError, OSError) as e:
    raise CheckpointError(
        f'{path} is not a readable .npz file ({type(e).__name__}: {e}); it is '
        'probably truncated or corrupt: download it again.') from None


def _read_safetensors(path: str, data: bytes) -> dict[str, np.ndarray]:
  from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
  try:
    return dict(st_numpy.load(data))
  except Exception as e:  # safetensors raises its own untyped errors.
    raise CheckpointError(
        f'{path} is not a readable .safetensors file ({e}); it is probably '
        'truncated or corrupt: download it again.') from None


def detect_layout(flat: Mapping[str, Any]) -> str:
  """Names the layout of a flat key dict: vit_jax|big_vision|timm|transformers."""
  keys = list(flat)
  if any(k.startswith(('patch_embed.', 'blocks.')) for k in keys):
    return 'timm'
  if any('embeddings.patch_embeddings' in k for k in keys):
    return 'transformers'
  if any('MultiHeadDotProductAttention_1/' in k for k in keys):
    return 'vit_jax'
  if any(k.startswith(('embedding/', 'params/embedding/')) for k in keys):
    return 'big_vision'
  raise CheckpointError(
      'Unrecognised parameter file layout; first keys: '
      f'{sorted(keys)[:5]}. Expected a ViT checkpoint from vit_jax, '
      'big_vision, timm or transformers.')


def _linen_key(key: str) -> str:
  """Maps one key of the vit_jax / big_vision layouts to the linen tree."""
  key = key.removeprefix('params/')
  if key == 'pos_embedding':  # big_vision keeps it at the top level.
    return 'Transformer/posembed_input/pos_embedding'
  match = _BLOCK_RE.match(key)
  if match:
    block, module, rest = match.groups()
    return f'{block}/{_PRE_LINEN_TO_LINEN.get(module, module)}/{rest}'
  return key


def _unscan(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
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
  """Any known layout -> flat dict keyed by '/'-joined linen tree paths."""
  layout = detect_layout(flat)
  if layout in ('timm', 'transformers'):
    from vit_jax import convert  # pylint: disable=g-import-not-at-top
    return convert.from_torch_layout(flat, layout)
  return {_linen_key(k): v for k, v in _unscan(dict(flat)).items()}


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


def load(path: str) -> dict[str, Any]:
  """Loads a parameter file of any known layout into the linen tree (numpy)."""
  return unflatten(to_linen_flat(read_flat(path)))


def save(params: Mapping[str, Any], path: str, layout: str = 'vit_jax'):
  """Writes params atomically: the file appears only once complete.

  layout 'vit_jax' writes the original .npz layout; 'timm' and 'transformers'
  write .safetensors state dicts for PyTorch users (see convert.py).
  """
  flat = {k: np.asarray(v) for k, v in flatten(params).items()}
  if layout == 'vit_jax':
    flat = {_pre_linen_key(k): v for k, v in flat.items()}
    _atomic_write(path, lambda f: np.savez(f, **flat))
  elif layout in ('timm', 'transformers'):
    from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
    from vit_jax import convert  # pylint: disable=g-import-not-at-top
    state = convert.to_torch_layout(flat, layout)
    _atomic_write(path, lambda f: f.write(st_numpy.save(state)))
  else:
    raise ValueError(f'Unknown layout {layout!r}; use vit_jax, timm or '
                     'transformers.')


def _pre_linen_key(key: str) -> str:
  match = _BLOCK_RE.match(key)
  if match:
    block, module, rest = match.groups()
    return f'{block}/{_LINEN_TO_PRE_LINEN.get(module, module)}/{rest}'
  return key


def _atomic_write(path: str, write_fn):
  """Writes to a temporary file beside `path`, then renames it into place."""
  path = os.fspath(path)
  if '://' in path:
    from etils import epath  # pylint: disable=g-import-not-at-top
    tmp = epath.Path(path + '.tmp')
    with tmp.open('wb') as f:
      write_fn(f)
    tmp.rename(path)
    return
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix='.tmp-',
                             suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, 'wb') as f:
      write_fn(f)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def resize_posemb(posemb_1xLxD: np.ndarray, num_tokens: int,
                  has_class_token: bool) -> np.ndarray:
  """Resizes position embeddings to a new patch grid (e.g. 224px -> 384px).

  The class token's embedding is kept aside; the grid is resized bilinearly.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if posemb_1xLxD.shape[1] == num_tokens:
    return posemb_1xLxD
  n_extra = 1 if has_class_token else 0
  extra, grid = posemb_1xLxD[:, :n_extra], posemb_1xLxD[0, n_extra:]
  old_side, new_side = _side(len(grid)), _side(num_tokens - n_extra)
  grid = grid.reshape(old_side, old_side, -1)
  grid = np.asarray(jax.image.resize(
      grid.astype(np.float32), (new_side, new_side, grid.shape[-1]),
      method='bilinear'), dtype=posemb_1xLxD.dtype)
  return np.concatenate([extra, grid.reshape(1, new_side * new_side, -1)], 1)


def _side(num_patches: int) -> int:
  side = int(round(num_patches ** 0.5))
  if side * side != num_patches:
    raise CheckpointError(f'{num_patches} position embeddings do not form a '
                          'square patch grid.')
  return side


def load_pretrained(pretrained_path: str, init_params: Mapping[str, Any],
                    model_config: models.ViTConfig) -> dict[str, Any]:
  """Pretrained weights fitted to a new task's freshly initialised params.

  Takes the head from `init_params` (any number of classes), drops
  `pre_logits` when the new model has no representation layer, resizes
  position embeddings to the new patch grid, checks every key and shape, and
  casts to the parameter dtypes of `init_params`.
  """
  restored = load(pretrained_path)
  restored['head'] = init_params['head']
  if model_config.representation_size is None:
    restored.pop('pre_logits', None)
  posemb = restored.get('Transformer', {}).get('posembed_input', {})
  init_posemb = init_params['Transformer']['posembed_input']['pos_embedding']
  if 'pos_embedding' in posemb:
    posemb['pos_embedding'] = resize_posemb(
        posemb['pos_embedding'], init_posemb.shape[1],
        model_config.classifier == 'token')
  check_compatible(flatten(restored), flatten(init_params), pretrained_path)
  init_flat = flatten(init_params)
  return unflatten({k: np.asarray(v, dtype=init_flat[k].dtype)
                    for k, v in flatten(restored).items()})


def check_compatible(restored: Mapping[str, Any], expected: Mapping[str, Any],
                     path: str):
  """Raises CheckpointError listing missing/unexpected keys and bad shapes."""
  missing = sorted(set(expected) - set(restored))
  unexpected = sorted(set(restored) - set(expected))
  mismatched = sorted(
      f'{k}: file {tuple(restored[k].shape)} vs model '
      f'{tuple(expected[k].shape)}'
      for k in set(restored) & set(expected)
      if tuple(restored[k].shape) != tuple(expected[k].shape))
  if not (missing or unexpected or mismatched):
    return
  lines = [f'{path} does not fit this model; the file fits '
           f'{describe(restored)}.']
  for title, items in (('missing', missing), ('unexpected', unexpected),
                       ('mismatched shapes', mismatched)):
    if items:
      shown = ', '.join(items[:8]) + (' ...' if len(items) > 8 else '')
      lines.append(f'  {title} ({len(items)}): {shown}')
  raise CheckpointError('\n'.join(lines))


def describe(flat: Mapping[str, Any]) -> str:
  """Names the architecture a flat linen-keyed parameter dict belongs to."""
  kernel = flat.get('embedding/kernel')
  if kernel is None:
    return 'no known ViT (no embedding/kernel)'
  layers = len({k.split('/')[1] for k in flat
                if k.startswith('Transformer/encoderblock_')})
  return models.name_for(kernel.shape[-1], layers, kernel.shape[0])


if __name__ == '__main__':
  # `python -m vit_jax.checkpoint fetch ViT-B_16`; the logic lives in hub.py.
  from vit_jax import hub  # pylint: disable=g-import-not-at-top
  raise SystemExit(hub.main())
