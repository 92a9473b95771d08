"""Reading and writing ViT parameter files (.npz, .safetensors).

File IO on top of `layout` (key names, layout detection, the architecture)
and `convert` (PyTorch state dicts). `load` reads any layout `layout`
recognises, from a local path or a remote one (gs://, https via etils), and
returns the in-memory tree of `models.VisionTransformer`; `save` writes the
original vit_jax .npz layout, so our files load in the original code,
big_vision and timm, or a timm / transformers .safetensors state dict.
Getting files from the bucket or the Hub is `hub.py`'s job.
"""

import io
import logging
import os
import tempfile
import zipfile
from typing import Any, Mapping, Optional

import numpy as np

from vit_jax import convert
from vit_jax import layout as tree_layout

log = logging.getLogger(__name__)

FETCH_HINT = ('Get it with `python -m vit_jax.hub fetch {name}` (tries the '
              'original bucket, then the Hugging Face Hub), or put the file '
              'there by hand (see checkpoints/README.md).')

# Defined in `layout`; named here too, where callers reading files catch it.
CheckpointError = tree_layout.CheckpointError
flatten = tree_layout.flatten
unflatten = tree_layout.unflatten
detect_layout = tree_layout.detect_layout


def is_remote(path: str) -> bool:
  """True for URLs (gs://, http(s)://, ...), read through etils."""
  return '://' in str(path)


def exists(path: str) -> bool:
  """Whether a local or remote file is there."""
  if is_remote(path):
    from etils import epath  # pylint: disable=g-import-not-at-top
    return epath.Path(path).exists()
  return os.path.exists(path)


def open_file(path: str):
  """Opens local or remote (gs://, https via etils) paths for reading."""
  if is_remote(path):
    from etils import epath  # pylint: disable=g-import-not-at-top
    return epath.Path(path).open('rb')
  return open(path, 'rb')


def read_flat(path: str) -> dict[str, np.ndarray]:
  """Reads a .npz or .safetensors file into a flat {key: array} dict."""
  path = os.fspath(path)
  if not exists(path):
    name = os.path.splitext(os.path.basename(path))[0]
    raise FileNotFoundError(
        f'No parameter file at {path!r}. ' + FETCH_HINT.format(name=name))
  with open_file(path) as f:
    data = f.read()
  if path.endswith('.safetensors'):
    return _read_safetensors(path, data)
  return _read_npz(path, data)


def _read_npz(path: str, data: bytes) -> dict[str, np.ndarray]:
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


def to_linen_flat(flat: Mapping[str, np.ndarray],
                  num_heads: Optional[int] = None) -> dict[str, np.ndarray]:
  """Any known layout -> flat dict keyed by '/'-joined linen tree paths.

  `num_heads` matters only for the PyTorch layouts (see convert.py); without
  it the heads come from the width of a named size.
  """
  layout = detect_layout(flat)
  if layout in convert.LAYOUTS:
    return convert.from_torch_layout(flat, layout, num_heads)
  return tree_layout.to_linen_flat(flat)


def load(path: str, num_heads: Optional[int] = None) -> dict[str, Any]:
  """Loads a parameter file of any known layout into the linen tree (numpy).

  timm / transformers files are converted on read; `num_heads` as in
  `to_linen_flat`.
  """
  return unflatten(to_linen_flat(read_flat(path), num_heads))


def save(params: Mapping[str, Any], path: str, layout: str = 'vit_jax'):
  """Writes params atomically: the file appears only once complete.

  layout 'vit_jax' writes the original .npz layout (pre-linen block names;
  the hybrids' GroupNorm params as (1, 1, 1, C), as in the published files);
  'timm' and 'transformers' write .safetensors state dicts for PyTorch users
  (see convert.py).
  """
  flat = {k: np.asarray(v) for k, v in flatten(params).items()}
  if layout == 'vit_jax':
    flat = tree_layout.published_groupnorm(
        {tree_layout.pre_linen_key(k): v for k, v in flat.items()})
    _atomic_write(path, lambda f: np.savez(f, **flat))
  elif layout in ('timm', 'transformers'):
    from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
    state = convert.to_torch_layout(flat, layout)
    _atomic_write(path, lambda f: f.write(st_numpy.save(state)))
  else:
    raise ValueError(f'Unknown layout {layout!r}; use vit_jax, timm or '
                     'transformers.')


def _atomic_write(path: str, write_fn):
  """Writes to a temporary file beside `path`, then renames it into place."""
  path = os.fspath(path)
  if is_remote(path):
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


def interpolate_posembed(posemb, num_tokens: int, has_class_token: bool):
  """Position embeddings resized to a new patch grid (224px -> 384px).

  As the original repository does it, so that fine-tuning at a new
  resolution starts from the same weights: the class token's embedding is
  kept aside and the grid is zoomed with `scipy.ndimage.zoom(order=1)`
  (linear, grid corners on grid corners).
  """
  import scipy.ndimage  # pylint: disable=g-import-not-at-top
  posemb = np.asarray(posemb)
  if posemb.ndim != 3 or posemb.shape[0] != 1:
    raise CheckpointError(f'Position embeddings of shape {posemb.shape}; '
                          'expected (1, tokens, width).')
  n_extra = 1 if has_class_token else 0
  extra, grid = posemb[:, :n_extra], posemb[0, n_extra:]
  old_side, new_side = _side(len(grid)), _side(num_tokens - n_extra)
  grid = grid.reshape(old_side, old_side, -1)
  zoom = (new_side / old_side, new_side / old_side, 1)
  grid = scipy.ndimage.zoom(grid, zoom, order=1)
  return np.concatenate([extra, grid.reshape(1, new_side * new_side, -1)], 1)


def _side(num_patches: int) -> int:
  side = int(round(num_patches ** 0.5))
  if side * side != num_patches:
    raise CheckpointError(f'{num_patches} position embeddings do not form a '
                          'square patch grid.')
  return side


def _flatten_keeping_empty(tree: Mapping[str, Any],
                           prefix: str = '') -> dict[str, Any]:
  """'a/b' keys, with an explicitly empty module kept as a {} leaf."""
  flat = {}
  for key, value in tree.items():
    path = f'{prefix}{key}'
    if isinstance(value, Mapping) and value:
      flat.update(_flatten_keeping_empty(value, path + '/'))
    else:
      flat[path] = value
  return flat


def inspect_params(*, params, expected, fail_if_extra: bool = True,
                   fail_if_missing: bool = True):
  """Checks the keys of `params` against `expected` (the original's API).

  Modules without weights are empty dicts in `expected` but absent from
  saved files (flax drops empty dicts when serialising): they are put back
  into `params`. Other missing and extra keys are logged, and raise a
  ValueError where `fail_if_missing` / `fail_if_extra` ask for it. Returns
  `params`.
  """
  params_flat = _flatten_keeping_empty(params)
  expected_flat = _flatten_keeping_empty(expected)
  missing = set(expected_flat) - set(params_flat)
  extra = set(params_flat) - set(expected_flat)
  empty = {k for k in missing if isinstance(expected_flat[k], Mapping)}
  for key in empty:
    *parents, leaf = key.split('/')
    node = params
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = {}
  missing -= empty
  if empty:
    log.warning('Inspect recovered empty keys:\n%s', empty)
  if missing:
    log.info('Inspect missing keys:\n%s', missing)
  if extra:
    log.info('Inspect extra keys:\n%s', extra)
  if (missing and fail_if_missing) or (extra and fail_if_extra):
    raise CheckpointError(
        f'Missing params from checkpoint: {missing}.\n'
        f'Extra params in checkpoint: {extra}.\n'
        f'Restored params from checkpoint: {params_flat.keys()}.\n'
        f'Expected params from code: {expected_flat.keys()}.')
  return params


def load_pretrained(*, pretrained_path: str, init_params: Mapping[str, Any],
                    model_config: Mapping[str, Any]) -> dict[str, Any]:
  """Pretrained weights fitted to a new task's freshly initialised params.

  The original's signature and tolerance: `model_config` is the model's
  config (`configs.models`); keys the file lacks or has in excess are
  logged, not an error (`inspect_params` with both `fail_if_*` False), and
  extra ones are kept. Takes the head from `init_params` (any number of
  classes), drops `pre_logits` when the new model has no
  `representation_size`, resizes position embeddings to the new patch grid
  (`interpolate_posembed`) and casts to the parameter dtypes of
  `init_params`. Beyond the original, a file whose shapes do not fit, or
  which is another architecture, raises CheckpointError listing every
  difference (the original failed later, inside the model). PyTorch layouts
  are read with the heads of `model_config`.
  """
  transformer = model_config.get('transformer') or {}
  restored = inspect_params(
      params=load(pretrained_path, transformer.get('num_heads')),
      expected=init_params, fail_if_extra=False, fail_if_missing=False)
  if 'head' in init_params:
    restored['head'] = init_params['head']
  if model_config.get('representation_size') is None:
    restored.pop('pre_logits', None)
  posemb = restored.get('Transformer', {}).get('posembed_input', {})
  if ('pos_embedding' in posemb
      and 'Transformer' in init_params):
    init_posemb = init_params['Transformer']['posembed_input'][
        'pos_embedding']
    if posemb['pos_embedding'].shape != init_posemb.shape:
      posemb['pos_embedding'] = interpolate_posembed(
          posemb['pos_embedding'], init_posemb.shape[1],
          model_config.get('classifier', 'token') in ('token',
                                                      'token_unpooled'))
  restored_flat, init_flat = flatten(restored), flatten(init_params)
  if (_mismatched(restored_flat, init_flat)
      or tree_layout.describe(restored_flat) != tree_layout.describe(
          init_flat)):
    check_compatible(restored_flat, init_flat, pretrained_path)
  return unflatten({
      k: np.asarray(v, dtype=init_flat[k].dtype if k in init_flat else None)
      for k, v in restored_flat.items()})


def _mismatched(restored: Mapping[str, Any],
                expected: Mapping[str, Any]) -> list[str]:
  """Keys in both whose shapes differ, as 'key: file (..) vs model (..)'."""
  return sorted(
      f'{k}: file {tuple(restored[k].shape)} vs model '
      f'{tuple(expected[k].shape)}'
      for k in set(restored) & set(expected)
      if tuple(restored[k].shape) != tuple(expected[k].shape))


def check_compatible(restored: Mapping[str, Any], expected: Mapping[str, Any],
                     path: str):
  """Raises CheckpointError listing missing/unexpected keys and bad shapes."""
  missing = sorted(set(expected) - set(restored))
  unexpected = sorted(set(restored) - set(expected))
  mismatched = _mismatched(restored, expected)
  if not (missing or unexpected or mismatched):
    return
  lines = [f'{path} does not fit this model; the file fits '
           f'{tree_layout.describe(restored)}.']
  for title, items in (('missing', missing), ('unexpected', unexpected),
                       ('mismatched shapes', mismatched)):
    if items:
      shown = ', '.join(items[:8]) + (' ...' if len(items) > 8 else '')
      lines.append(f'  {title} ({len(items)}): {shown}')
  raise CheckpointError('\n'.join(lines))
