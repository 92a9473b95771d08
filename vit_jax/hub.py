"""Getting pretrained weights: a local file, the original bucket, or the Hub.

`fetch('ViT-B_16', 'checkpoints')` returns a path holding the weights, trying
in order: the local file `checkpoints/ViT-B_16.npz`; a Hub file of the name's
sources already in the Hugging Face cache (no network needed); the configured
`pretrained_dir` when it is remote (gs:// is read in place, http(s) is
downloaded); the public https URL of the original bucket; the Hugging Face
Hub repos known for the name (`SOURCES`). Since February 2026 the bucket
refuses anonymous downloads (HTTP 403), so the Hub is usually what works.

Downloads resume after interruption (HTTP Range into a `.partial` file), are
checked against Content-Length (and sha256 where known), and appear under
their final name only when complete. Each writer has its own `.partial` file,
locked while it writes, so concurrent fetches of one file (the processes of a
multi-host job, two shells) never write into the same bytes; a later run
adopts a partial file whose writer has gone and resumes it. Hub files stay
where `huggingface_hub` puts them (its cache, resume and HF_ENDPOINT): `fetch`
returns the cached file, which `checkpoint.load` reads in its timm or
transformers layout, so there is no second copy. A file of your own
(`--source`) is written as `{name}.npz` in the vit_jax layout, where
fine-tuning looks. Tests point the bucket and the Hub at 127.0.0.1.

CLI: python -m vit_jax.hub fetch ViT-B_16 [--pretrained_dir checkpoints]
     python -m vit_jax.hub sources
"""

import contextlib
import csv
import dataclasses
import fcntl
import glob
import hashlib
import http.client
import io
import logging
import os
import socket
import sys
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from typing import Optional, Sequence

from vit_jax import checkpoint
from vit_jax import cli
from vit_jax import preemption

log = logging.getLogger(__name__)

# The original bucket; $VIT_JAX_BUCKET_URL points it at a mirror (or a test).
BUCKET = os.environ.get('VIT_JAX_BUCKET_URL',
                        'https://storage.googleapis.com/vit_models')
# The Mixer files are in a bucket of their own ($VIT_JAX_MIXER_BUCKET_URL).
MIXER_BUCKET = os.environ.get('VIT_JAX_MIXER_BUCKET_URL',
                              'https://storage.googleapis.com/mixer_models')
DEFAULT_DIR = 'checkpoints'
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Source:
  """One place a checkpoint can come from.

  kind: 'url' (http(s):// or gs:// file), 'hf' (a Hugging Face Hub repo and
  a file in it) or 'file' (a local path). layout None means: tell from keys.
  """
  kind: str
  location: str
  filename: str = ''
  layout: Optional[str] = None
  revision: Optional[str] = None
  sha256: Optional[str] = None
  note: str = ''

  def __str__(self):
    if self.kind == 'hf':
      at = f'@{self.revision}' if self.revision else ''
      return f'hf://{self.location}/{self.filename}{at}'
    return self.location


# What the published files hold differs; `checkpoint.load_pretrained` takes
# the head from the new model and drops pre_logits when the new model has no
# representation layer, so every one of them fine-tunes the same way.
_ORIG = 'original i21k weights: pre_logits + zeroed 21843-class head'
_ORIG_HF = 'original i21k weights: pre_logits (the pooler), no head'
_ORIG_TIMM = 'original i21k weights without pre_logits'
_AUGREG = 'AugReg i21k weights (a later run): 21843-class head, no pre_logits'
_AUGREG_OTHER = ('AugReg i21k weights of another AugReg setting than the '
                 'bucket file: 21843-class head, no pre_logits')
_ORIG_HYBRID = 'original i21k hybrid weights'
_FT_384 = ('original i21k weights fine-tuned on ImageNet at 384px: '
           '1000-class head')
_MIXER = 'original i21k Mixer weights: 21843-class head'


def _bucket(path: str, note: str, bucket: Optional[str] = None) -> Source:
  return Source('url', f'{bucket or BUCKET}/{path}.npz', layout='vit_jax',
                note=note)


def _timm(repo: str, note: str) -> Source:
  return Source('hf', f'timm/{repo}', 'model.safetensors', 'timm', note=note)


def _transformers(repo: str, revision: Optional[str] = None) -> Source:
  return Source('hf', f'google/{repo}', 'model.safetensors', 'transformers',
                revision, note=_ORIG_HF)


# Model name -> sources, in the order tried after the local file. Repo names
# and files are the ones published on the Hub (google/* by transformers,
# timm/* by timm). google/vit-large-patch32-224-in21k has its safetensors
# only in an open pull request, hence the revision.
SOURCES = {
    'ViT-Ti_16': (
        _bucket('augreg/Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-'
                'sd_0.0', _AUGREG),
        _timm('vit_tiny_patch16_224.augreg_in21k', _AUGREG)),
    'ViT-S_16': (
        _bucket('augreg/S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-'
                'sd_0.0', _AUGREG),
        _timm('vit_small_patch16_224.augreg_in21k', _AUGREG)),
    'ViT-S_32': (
        _bucket('augreg/S_32-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-'
                'sd_0.0', _AUGREG),
        _timm('vit_small_patch32_224.augreg_in21k', _AUGREG)),
    'ViT-B_8': (
        _bucket('augreg/B_8-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-'
                'sd_0.0', _AUGREG),
        _timm('vit_base_patch8_224.augreg_in21k', _AUGREG)),
    'ViT-B_16': (
        _bucket('imagenet21k/ViT-B_16', _ORIG),
        _transformers('vit-base-patch16-224-in21k'),
        _timm('vit_base_patch16_224.orig_in21k', _ORIG_TIMM),
        _timm('vit_base_patch16_224.augreg_in21k', _AUGREG)),
    'ViT-B_32': (
        _bucket('imagenet21k/ViT-B_32', _ORIG),
        _transformers('vit-base-patch32-224-in21k'),
        _timm('vit_base_patch32_224.orig_in21k', _ORIG_TIMM),
        _timm('vit_base_patch32_224.augreg_in21k', _AUGREG)),
    'ViT-L_16': (
        _bucket('imagenet21k/ViT-L_16', _ORIG),
        _transformers('vit-large-patch16-224-in21k'),
        _timm('vit_large_patch16_224.orig_in21k', _ORIG_TIMM),
        _timm('vit_large_patch16_224.augreg_in21k', _AUGREG)),
    'ViT-L_32': (
        _bucket('imagenet21k/ViT-L_32', _ORIG),
        _transformers('vit-large-patch32-224-in21k', revision='refs/pr/1'),
        _timm('vit_large_patch32_224.orig_in21k', _ORIG_TIMM)),
    'ViT-H_14': (
        _bucket('imagenet21k/ViT-H_14', _ORIG),
        _transformers('vit-huge-patch14-224-in21k'),
        _timm('vit_huge_patch14_224.orig_in21k', _ORIG_TIMM)),
    # Hybrids and Mixers: the bucket paths of the original's README and
    # notebook; timm/* only where timm publishes that model's weights (it
    # has none for R26+ViT-B_32 or Mixer-B_32).
    'R+ViT-Ti_16': (
        _bucket('augreg/R_Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-'
                'sd_0.0', _AUGREG),
        _timm('vit_tiny_r_s16_p8_224.augreg_in21k', _AUGREG)),
    'R26+ViT-S_32': (
        _bucket('augreg/R26_S_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-'
                'sd_0.0', _AUGREG),
        _timm('vit_small_r26_s32_224.augreg_in21k', _AUGREG_OTHER)),
    'R26+ViT-B_32': (
        _bucket('imagenet21k/R26+ViT-B_32', _ORIG_HYBRID),),
    'R50+ViT-B_16': (
        _bucket('imagenet21k/R50+ViT-B_16', _ORIG_HYBRID),
        _timm('vit_base_r50_s16_224.orig_in21k', _ORIG_TIMM),
        _timm('vit_base_r50_s16_384.orig_in21k_ft_in1k', _FT_384)),
    'R50+ViT-L_32': (
        _bucket('imagenet21k/R50+ViT-L_32', _ORIG_HYBRID),
        _timm('vit_large_r50_s32_224.augreg_in21k', _AUGREG_OTHER)),
    'Mixer-B_16': (
        _bucket('imagenet21k/Mixer-B_16', _MIXER, MIXER_BUCKET),
        _timm('mixer_b16_224.goog_in21k', _MIXER)),
    'Mixer-L_16': (
        _bucket('imagenet21k/Mixer-L_16', _MIXER, MIXER_BUCKET),
        _timm('mixer_l16_224.goog_in21k', _MIXER)),
}


# huggingface_hub errors meaning "no connection and not in the HF cache".
_HUB_UNREACHABLE = ('LocalEntryNotFoundError', 'OfflineModeIsEnabled')


class FetchError(FileNotFoundError):
  """No source gave usable weights; the message lists each source and why."""


class IntegrityError(IOError):
  """A download of the wrong size or checksum (it is deleted)."""


class _Interrupted(IOError):
  """The connection ended early; the `.partial` file is kept for resuming."""


def fetch(name: str, pretrained_dir: str = DEFAULT_DIR,
          sources: Optional[Sequence[Source]] = None, *,
          cache_dir: str = DEFAULT_DIR, hf_endpoint: Optional[str] = None,
          hf_cache_dir: Optional[str] = None, retries: int = 3,
          timeout: float = 60.0, progress: bool = True,
          force: bool = False) -> str:
  """Returns a path holding `name`'s weights, getting them if need be.

  Downloads land in `pretrained_dir`, or in `cache_dir` when `pretrained_dir`
  is remote; Hub files in the Hugging Face cache (`hf_cache_dir`, else
  huggingface_hub's default). `sources` replaces the `SOURCES` entry of
  `name` (e.g. a mirror). `hf_endpoint` (else $HF_ENDPOINT) redirects the
  Hub. `force` gets the file again (replacing it atomically once the new one
  is good) even if `find_local` finds one.
  """
  dest = local_path(name, pretrained_dir, cache_dir)
  candidates = list(SOURCES.get(name, ()) if sources is None else sources)
  found = None if force else find_local(name, pretrained_dir, candidates,
                                        cache_dir=cache_dir,
                                        hf_cache_dir=hf_cache_dir)
  if found:
    return found
  tried = [(f'local file {dest}', 'replaced (force)' if force else
            'not there, nor a Hub file of the sources in the HF cache')]
  if checkpoint.is_remote(pretrained_dir):
    candidates.insert(0, Source('url', f'{str(pretrained_dir).rstrip("/")}/'
                                f'{name}.npz', note='the configured '
                                'pretrained_dir'))
  if not candidates:
    tried.append(('known sources', f'none for {name!r}; names with '
                  f'sources: {", ".join(SOURCES)}'))
  options = dict(retries=retries, timeout=timeout, progress=progress,
                 hf_endpoint=hf_endpoint, hf_cache_dir=hf_cache_dir,
                 force=force)
  for source in candidates:
    try:
      path = _fetch_one(source, name, dest, **options)
    except Exception as e:  # pylint: disable=broad-except
      # Any failure of one source (HTTP, network, integrity, layout) is
      # reported at the end; the next source may still work.
      log.info('%s failed: %s; trying the next source', source, _reason(e))
      tried.append((str(source), _reason(e)))
      continue
    log.info('%s: got %s from %s%s', name, path, source,
             f' ({source.note})' if source.note else '')
    return path
  raise FetchError(_failure_message(name, dest, tried))


AUGREG_INDEX = 'index.csv'  # The AugReg folder's table of its files.


def best_augreg_file(name: str, directory: str) -> str:
  """The AugReg file (without .npz) of model `name` ('B_16', 'R_Ti_16')
  pre-trained on ImageNet-21k with the best final upstream validation
  accuracy, from `directory`/index.csv: the original's default choice."""
  path = f'{directory.rstrip("/")}/{AUGREG_INDEX}'
  try:
    with checkpoint.open_file(path) as f:
      rows = list(csv.DictReader(io.TextIOWrapper(f, encoding='utf-8')))
  except OSError as e:
    raise FetchError(
        f'Cannot read {path} ({e}), which picks the AugReg file for {name!r}. '
        'Name the file instead: --config=vit_jax/configs/augreg.py:'
        f'{name}-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0 (see '
        'the AugReg table), or put index.csv there.') from None
  candidates = [row for row in rows if row.get('ds') == 'i21k'
                and row.get('filename', '').split('-')[0] == name]
  if not candidates:
    raise FetchError(f'{path} lists no i21k file of model {name!r}.')
  best = max(candidates, key=lambda row: float(row['final_val']))
  log.info('Selected filename=%r for %r with final_val=%.3f',
           best['filename'], name, float(best['final_val']))
  return best['filename']


def local_path(name: str, pretrained_dir: str = DEFAULT_DIR,
               cache_dir: str = DEFAULT_DIR) -> str:
  """Where `fetch` finds or puts `name`'s .npz on this machine."""
  local_dir = (cache_dir if checkpoint.is_remote(pretrained_dir)
               else pretrained_dir)
  return os.path.join(local_dir, f'{name}.npz')


def find_local(name: str, pretrained_dir: str = DEFAULT_DIR,
               sources: Optional[Sequence[Source]] = None, *,
               cache_dir: str = DEFAULT_DIR,
               hf_cache_dir: Optional[str] = None) -> Optional[str]:
  """`name`'s weights on this machine without any request, else None.

  The `.npz` at `local_path`, else the first of the Hub sources (`sources`,
  else `SOURCES[name]`) that the Hugging Face cache holds: so a run without
  network finds a Hub file an earlier run fetched.
  """
  dest = local_path(name, pretrained_dir, cache_dir)
  if os.path.exists(dest):
    return dest
  for source in (SOURCES.get(name, ()) if sources is None else sources):
    if source.kind == 'hf':
      cached = _hf_cached(source, hf_cache_dir)
      if cached:
        return cached
  return None


def _hf_cached(source: Source, cache_dir: Optional[str]) -> Optional[str]:
  """The path of a Hub file in the HF cache, or None; never a request."""
  import huggingface_hub  # pylint: disable=g-import-not-at-top
  cached = huggingface_hub.try_to_load_from_cache(
      source.location, source.filename, cache_dir=cache_dir,
      revision=source.revision)
  return cached if isinstance(cached, str) else None


def _fetch_one(source: Source, name: str, dest: str, *, retries, timeout,
               progress, hf_endpoint, hf_cache_dir, force) -> str:
  """Gets one source to `dest` (or returns a gs:// path to read in place)."""
  if source.kind == 'url' and source.location.startswith('gs://'):
    if not _remote_exists(source.location):
      raise FileNotFoundError('not there')
    return source.location
  if source.kind == 'url':
    if _is_npz(source.location) and source.layout in (None, 'vit_jax',
                                                      'big_vision'):
      return download(source.location, dest, sha256=source.sha256,
                      retries=retries, timeout=timeout, progress=progress)
    suffix = os.path.splitext(source.location)[1] or '.safetensors'
    # Unique per writer: a concurrent fetch must not install or delete it.
    tmp = os.path.join(os.path.dirname(dest),
                       f'.{name}.download-{uuid.uuid4().hex[:8]}{suffix}')
    download(source.location, tmp, sha256=source.sha256, retries=retries,
             timeout=timeout, progress=progress)
    try:
      return _install(tmp, dest, source.layout)
    finally:
      os.remove(tmp)
  if source.kind == 'hf':
    path = _hf_download(source, hf_endpoint, hf_cache_dir, force)
    _check_layout(path, source.layout)
    return path
  if source.kind == 'file':
    if not os.path.exists(source.location):
      raise FileNotFoundError('not there')
    return _install(source.location, dest, source.layout)
  raise ValueError(f'unknown source kind {source.kind!r}')


def _remote_exists(path: str) -> bool:
  return checkpoint.exists(path)


def _is_npz(location: str) -> bool:
  return location.split('?')[0].endswith('.npz')


def _hf_download(source: Source, endpoint: Optional[str],
                 cache_dir: Optional[str], force: bool) -> str:
  """huggingface_hub's download: its cache, resume and size checks."""
  import huggingface_hub  # pylint: disable=g-import-not-at-top
  from huggingface_hub import constants  # pylint: disable=g-import-not-at-top
  endpoint = (endpoint or os.environ.get('HF_ENDPOINT')
              or constants.ENDPOINT)
  return huggingface_hub.hf_hub_download(
      source.location, source.filename, revision=source.revision,
      endpoint=endpoint, cache_dir=cache_dir, force_download=force,
      local_files_only=not _reachable(endpoint))


def _reachable(url: str, timeout: float = 10.0) -> bool:
  """One quick connection attempt: offline, huggingface_hub retries ~20 s."""
  try:
    urllib.request.urlopen(urllib.request.Request(url, method='HEAD'),
                           timeout=timeout).close()
  except urllib.error.HTTPError:
    return True  # It answered, if only with an error status.
  except OSError:  # URLError, refused connections, timeouts.
    return False
  return True


def _check_layout(path: str, layout: Optional[str]) -> str:
  """The file's layout; an error (so the next source is tried) if unusable.

  A layout the keys do not show, or another than the source declares, would
  otherwise surface only when fine-tuning loads the file.
  """
  found = checkpoint.detect_layout(checkpoint.read_flat(path))
  if layout and found != layout:
    raise checkpoint.CheckpointError(
        f'{path} holds a {found} state dict, not the {layout} one expected.')
  return found


def _install(path: str, dest: str, layout: Optional[str]) -> str:
  """Writes a file of any known layout to `dest` as a vit_jax .npz.

  PyTorch layouts take their heads from the width (see convert.py).
  """
  _check_layout(path, layout)
  checkpoint.save(checkpoint.load(path), dest)
  return dest


def download(url: str, path: str, *, sha256: Optional[str] = None,
             retries: int = 3, timeout: float = 60.0,
             progress: bool = True) -> str:
  """Downloads `url` to `path`: resumable, size/sha256-checked, atomic.

  Bytes go to this writer's own `.partial` file (see `_own_partial`); an
  interrupted transfer resumes from it (here, up to `retries` times, or in a
  later call), and only a complete, verified file is renamed to `path`. A
  wrong size or checksum deletes it.
  """
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  start_time = time.monotonic()
  with _own_partial(path) as partial:
    for attempt in range(1, retries + 1):
      try:
        total = _transfer(url, partial, timeout, progress,
                          os.path.basename(path))
        break
      except _Interrupted as e:
        if attempt == retries:
          raise
        log.warning('%s: %s; resuming (try %d of %d)', url, e, attempt + 1,
                    retries)
    _verify(partial, total, sha256, is_npz=path.endswith('.npz'))
    os.replace(partial, path)
  size = os.path.getsize(path)
  seconds = max(time.monotonic() - start_time, 1e-6)
  log.info('%s: %.1f MB in %.1f s (%.1f MB/s)', path, size / 1e6, seconds,
           size / 1e6 / seconds)
  return path


def partial_files(path: str) -> list[str]:
  """The `.partial` files of downloads to `path`, of any writer."""
  return sorted(glob.glob(f'{glob.escape(path)}.*.partial'))


@contextlib.contextmanager
def _own_partial(path: str):
  """Yields a `.partial` file that only this writer writes, locked meanwhile.

  A shared `path + '.partial'` would let two processes fetching the same file
  (all hosts of a job, into a shared folder) append to one file at once. Here
  each writer holds an exclusive lock on its own file; a partial file nobody
  holds is left over from a run that stopped, and is adopted (renamed to this
  writer's name under its lock) so that its bytes are resumed, not refetched.
  The lock goes when the file is closed, including when the process dies.
  An empty file is removed when the writer is done.
  """
  mine = _writer_name(path)
  fd = _adopt_stale_partial(path, mine)
  while fd is None:
    fd = os.open(mine, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
    if not _lock_if_still_named(fd, mine):
      # Another writer's sweep adopted it, empty, before we locked it.
      os.close(fd)
      fd, mine = None, _writer_name(path)
  try:
    yield mine
  finally:
    # Nothing to resume from an empty file (an HTTP 403, offline): drop it,
    # still under the lock, so that a failed fetch leaves nothing behind.
    if _size_or_zero(mine) == 0 and os.path.exists(mine):
      os.remove(mine)
    os.close(fd)


def _writer_name(path: str) -> str:
  """A `.partial` name no other writer (host, process, call) uses."""
  return (f'{path}.{socket.gethostname()}-{os.getpid()}-'
          f'{uuid.uuid4().hex[:8]}.partial')


def _adopt_stale_partial(path: str, mine: str) -> Optional[int]:
  """A locked fd of the largest unheld partial file, renamed to `mine`.

  Other unheld partial files are deleted: only one resume can be useful.
  """
  adopted = None
  by_size = sorted(partial_files(path), key=_size_or_zero, reverse=True)
  for candidate in by_size:
    try:
      fd = os.open(candidate, os.O_RDWR)
    except FileNotFoundError:  # Finished or adopted meanwhile.
      continue
    if not _lock_if_still_named(fd, candidate):
      os.close(fd)  # Its writer is alive (or another adopter won).
    elif adopted is None:
      os.rename(candidate, mine)
      adopted = fd
    else:
      os.remove(candidate)
      os.close(fd)
  return adopted


def _lock_if_still_named(fd: int, name: str) -> bool:
  """Locks `fd` without waiting; True if `name` is still that file.

  Holding the lock, nobody else can rename or delete the file, so a True
  answer stays true until the fd is closed.
  """
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    return False
  try:
    if os.stat(name).st_ino == os.fstat(fd).st_ino:
      return True
  except FileNotFoundError:
    pass
  fcntl.flock(fd, fcntl.LOCK_UN)
  return False


def _size_or_zero(name: str) -> int:
  try:
    return os.path.getsize(name)
  except FileNotFoundError:
    return 0


def _transfer(url: str, partial: str, timeout: float, progress: bool,
              label: str) -> Optional[int]:
  """One HTTP request appending to `partial`; returns the total size.

  Errors before the body starts (HTTP 403/404, offline) propagate; a body
  that ends early raises `_Interrupted` so that the caller can resume.
  """
  start = os.path.getsize(partial) if os.path.exists(partial) else 0
  headers = {'Range': f'bytes={start}-'} if start else {}
  try:
    response = urllib.request.urlopen(
        urllib.request.Request(url, headers=headers), timeout=timeout)
  except urllib.error.HTTPError as e:
    if e.code != 416 or not start:
      raise
    total = _total_from_range(e.headers.get('Content-Range'))
    if total == start:  # A previous run got every byte but did not finish.
      return total
    # Stale: the file changed on the server. Emptied, not deleted: the
    # writer's lock is on this file.
    open(partial, 'wb').close()
    return _transfer(url, partial, timeout, progress, label)
  with response:
    if response.status == 206:
      total = _total_from_range(response.headers.get('Content-Range'))
      mode = 'ab'
    else:  # The server ignored Range (or there was none): start over.
      length = response.headers.get('Content-Length')
      total, start, mode = (int(length) if length else None), 0, 'wb'
    _copy_body(response, partial, mode, start, total, progress, label)
  done = os.path.getsize(partial)
  if total is not None and done < total:
    raise _Interrupted(f'connection ended at {done} of {total} bytes')
  return total


def _copy_body(response, partial: str, mode: str, start: int,
               total: Optional[int], progress: bool, label: str):
  """Streams the body into `partial` with a progress bar (% and MB/s)."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  with open(partial, mode) as f, tqdm(
      total=total, initial=start, unit='B', unit_scale=True,
      desc=label,
      disable=not progress) as bar:
    while True:
      try:
        chunk = response.read(_CHUNK)
      except (OSError, http.client.HTTPException) as e:
        raise _Interrupted(f'connection lost ({e})') from None
      if not chunk:
        return
      f.write(chunk)
      bar.update(len(chunk))


def _total_from_range(content_range: Optional[str]) -> Optional[int]:
  """'bytes 100-199/200' or 'bytes */200' -> 200."""
  total = (content_range or '').rpartition('/')[2]
  return int(total) if total.isdigit() else None


def _verify(partial: str, total: Optional[int], sha256: Optional[str],
            is_npz: bool):
  """Deletes and raises for a wrong size, checksum or a non-zip .npz."""
  size = os.path.getsize(partial)
  problem = None
  if total is not None and size != total:
    problem = f'size {size} bytes, but the server announced {total}'
  elif sha256 and _sha256(partial) != sha256.lower():
    problem = f'sha256 {_sha256(partial)} is not the expected {sha256}'
  elif is_npz and not zipfile.is_zipfile(partial):
    problem = 'not an .npz (zip) file; an error page?'
  if problem:
    os.remove(partial)
    raise IntegrityError(f'download rejected: {problem}')


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(_CHUNK), b''):
      digest.update(block)
  return digest.hexdigest()


def _reason(error: Exception) -> str:
  """A one-line why, naming 403/404/offline plainly."""
  if isinstance(error, urllib.error.HTTPError):
    hint = {403: ' (access refused)', 404: ' (no such file)'}.get(error.code,
                                                                  '')
    return f'HTTP {error.code} {error.reason}{hint}'
  if isinstance(error, urllib.error.URLError):
    return f'unreachable ({error.reason}); offline?'
  if type(error).__name__ in _HUB_UNREACHABLE:
    return ('the Hub is unreachable and the file is not in the HF cache; '
            'offline?')
  text = str(error).strip().splitlines()
  first = text[0] if text else ''
  return f'{type(error).__name__}: {first}' if first else type(error).__name__


def _failure_message(name: str, dest: str, tried) -> str:
  lines = [f'Could not get pretrained weights for {name}. Tried, in order:']
  lines += [f'  - {where}: {why}' for where, why in tried]
  lines += [
      'To install them by hand, download one of the files above (or use your '
      'own .npz/.safetensors in the vit_jax, big_vision, timm or transformers '
      'layout) and either',
      f'  put a vit_jax/big_vision .npz at {dest}, or',
      f'  run: python -m vit_jax.hub fetch {name} --pretrained_dir '
      f'{os.path.dirname(dest) or "."} --source /path/to/file',
      'See checkpoints/README.md.']
  return '\n'.join(lines)


def parse_source(text: str) -> Source:
  """'hf://org/repo/file[@revision]', an http(s)/gs URL or a local path."""
  if text.startswith('hf://'):
    spec, _, revision = text[len('hf://'):].partition('@')
    parts = spec.split('/')
    if len(parts) < 3:
      raise ValueError(f'{text!r}: use hf://org/repo/file[@revision].')
    return Source('hf', '/'.join(parts[:2]), '/'.join(parts[2:]),
                  revision=revision or None)
  if checkpoint.is_remote(text):
    return Source('url', text)
  return Source('file', text)


def parse_args(argv: Optional[Sequence[str]] = None):
  """`fetch NAME` gets weights; `sources` prints the table."""
  parser = cli.Parser(
      'python -m vit_jax.hub',
      'Get pretrained ViT weights (see checkpoints/README.md).')
  commands = parser.add_subparsers(dest='command', required=True)
  get = commands.add_parser(
      'fetch', help='get the weights of NAME; prints where they are')
  get.add_argument('name', help='e.g. ViT-B_16')
  get.add_shared('pretrained_dir', default=DEFAULT_DIR)
  get.add_argument('--cache_dir', default=DEFAULT_DIR,
                   help='where files go when --pretrained_dir is remote')
  get.add_argument('--source', action='append', default=None,
                   help='try this instead of the table (URL, local file or '
                        'hf://org/repo/file[@rev]); repeatable')
  get.add_argument('--hf_endpoint', default=None,
                   help='Hugging Face Hub endpoint (default $HF_ENDPOINT)')
  get.add_argument('--force', action='store_true',
                   help='get the file again even if it is there')
  get.add_argument('--quiet', action='store_true', help='no progress bar')
  commands.add_parser('sources', help='list model names and their sources')
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(argv)
  if not log.handlers:  # Progress lines on stderr, without the root logger.
    log.addHandler(logging.StreamHandler())
    log.setLevel(logging.INFO)
  if args.command == 'sources':
    print(sources_table())
    return 0
  sources = None if args.source is None else [
      parse_source(s) for s in args.source]
  try:
    path = fetch(args.name, args.pretrained_dir, sources,
                 cache_dir=args.cache_dir, hf_endpoint=args.hf_endpoint,
                 progress=not args.quiet, force=args.force)
  except (FetchError, ValueError) as e:
    print(f'Error: {e}', file=sys.stderr)  # Says what was tried and what to do.
    return 1
  print(path)
  return 0


def sources_table() -> str:
  """The SOURCES table as Markdown (the README shows the same)."""
  rows = ['| name | source | layout | what it holds |', '|---|---|---|---|']
  for name, sources in SOURCES.items():
    for source in sources:
      rows.append(f'| {name} | `{source}` | {source.layout} | '
                  f'{source.note} |')
  return '\n'.join(rows)


if __name__ == '__main__':
  raise SystemExit(preemption.exit_on_ctrl_c(
      main, 'a download stops in its .partial file and resumes next time; '
      'no file is written under its final name unless complete.'))
