"""Tests for hub.py against an HTTP server on 127.0.0.1, never the internet.

The server serves synthetic files, can refuse (403/404), drop the connection
midway the first time, honour or ignore Range, lie about Content-Length, and
answers the Hugging Face Hub's `/{repo}/resolve/{revision}/{file}` route with
the headers `huggingface_hub.hf_hub_download` needs (X-Repo-Commit, ETag), so
the real Hub client runs against it.
"""

import dataclasses
import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import local_http_server
from vit_jax import checkpoint
from vit_jax import convert
from vit_jax import hub
from vit_jax import layout
from vit_jax import models
from vit_jax.configs import models as model_configs

TINY = dict(hidden_size=16, mlp_dim=32, num_heads=2, num_layers=1)


@dataclasses.dataclass
class Route:
  """What the server answers for one path."""
  body: bytes = b''
  status: int = 200
  drop_first: Optional[int] = None  # First GET sends only this many bytes.
  ranges: bool = True  # Honour Range requests.
  announce: Optional[int] = None  # Content-Length to claim instead.
  hub: bool = False  # Add the Hugging Face Hub headers.
  gets: int = 0


class _Handler(http.server.BaseHTTPRequestHandler):
  """Serves `server.routes`; records (method, path, Range) per request."""

  def do_HEAD(self):  # pylint: disable=invalid-name
    self._answer(send_body=False)

  def do_GET(self):  # pylint: disable=invalid-name
    self._answer(send_body=True)

  def _answer(self, send_body):
    route = self.server.routes.get(self.path)
    self.server.requests.append(
        (self.command, self.path, self.headers.get('Range')))
    if route is None or route.status != 200:
      self.send_response(404 if route is None else route.status)
      self.send_header('Content-Length', '0')
      self.end_headers()
      return
    body, start, status = route.body, 0, 200
    wanted = self.headers.get('Range')
    if wanted and route.ranges:
      start = int(wanted[len('bytes='):].split('-')[0])
      if start >= len(body):
        self.send_response(416)
        self.send_header('Content-Range', f'bytes */{len(body)}')
        self.send_header('Content-Length', '0')
        self.end_headers()
        return
      status = 206
    self.send_response(status)
    if status == 206:
      self.send_header('Content-Range',
                       f'bytes {start}-{len(body) - 1}/{len(body)}')
    length = len(body) - start if route.announce is None else route.announce
    self.send_header('Content-Length', str(length))
    if route.hub:
      self.send_header('X-Repo-Commit', 'c' * 40)
      self.send_header('ETag', f'"{hashlib.sha256(body).hexdigest()}"')
    self.end_headers()
    if not send_body:
      return
    if self.server.together is not None:
      self.server.together.wait()  # Hold each answer until all have asked.
    route.gets += 1
    payload = body[start:]
    if route.drop_first is not None and route.gets == 1:
      payload = payload[:route.drop_first]
    self.wfile.write(payload)
    self.close_connection = True

  def log_message(self, *args):
    pass


@pytest.fixture
def server():
  with local_http_server(_Handler) as srv:
    srv.routes, srv.requests, srv.together = {}, [], None
    yield srv


def _closed_port_url() -> str:
  """A URL nothing listens on: behaves like being offline."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  return f'http://127.0.0.1:{port}/ViT-B_16.npz'


def _tiny_params(seed=0, **overrides):
  model = models.get_model('ViT-Ti_16', 10, **{**TINY, **overrides})
  params = model.init(jax.random.PRNGKey(seed),
                      np.zeros((1, 32, 32, 3), np.float32))['params']
  return model, jax.tree.map(np.asarray, params)


def _file_bytes(tmp_path, layout='vit_jax', **overrides) -> bytes:
  """A real parameter file of a tiny model, as served bytes."""
  _, params = _tiny_params(**overrides)
  suffix = '.npz' if layout == 'vit_jax' else '.safetensors'
  path = str(tmp_path / f'served-{layout}{suffix}')
  checkpoint.save(params, path, layout=layout)
  with open(path, 'rb') as f:
    return f.read()


def _url_source(server, path, **kwargs) -> hub.Source:
  return hub.Source('url', server.url + path, **kwargs)


def _fetch(name, directory, sources, **kwargs):
  return hub.fetch(name, str(directory), sources, progress=False,
                   hf_cache_dir=str(directory / 'hf-cache'), **kwargs)


def _leftovers(directory):
  return sorted(p for p in os.listdir(directory) if p != 'hf-cache')


# ------------------------------------------------------------------ downloads


def test_download_lands_under_final_name_with_same_bytes(server, tmp_path):
  body = _file_bytes(tmp_path)
  server.routes['/ViT-B_16.npz'] = Route(body)
  out = tmp_path / 'out'
  path = _fetch('ViT-B_16', out, [_url_source(server, '/ViT-B_16.npz')])
  assert path == str(out / 'ViT-B_16.npz')
  assert open(path, 'rb').read() == body
  assert _leftovers(out) == ['ViT-B_16.npz']  # No .partial left behind.


def test_interrupted_download_resumes_with_range(server, tmp_path):
  body = _file_bytes(tmp_path)
  half = len(body) // 2
  server.routes['/ViT-B_16.npz'] = Route(body, drop_first=half)
  path = _fetch('ViT-B_16', tmp_path / 'out',
                [_url_source(server, '/ViT-B_16.npz')])
  assert open(path, 'rb').read() == body
  gets = [r for r in server.requests if r[0] == 'GET']
  assert gets[0][2] is None and gets[1][2] == f'bytes={half}-'


def test_interrupted_run_keeps_partial_and_next_run_resumes(server,
                                                            tmp_path):
  body = _file_bytes(tmp_path)
  half = len(body) // 2
  server.routes['/f.npz'] = Route(body, drop_first=half)
  out = tmp_path / 'out'
  with pytest.raises(hub.FetchError, match='connection ended'):
    _fetch('ViT-B_16', out, [_url_source(server, '/f.npz')], retries=1)
  [partial] = hub.partial_files(str(out / 'ViT-B_16.npz'))  # Nothing final.
  assert _leftovers(out) == [os.path.basename(partial)]
  assert os.path.getsize(partial) == half
  path = _fetch('ViT-B_16', out, [_url_source(server, '/f.npz')])
  assert open(path, 'rb').read() == body
  assert server.requests[-1][2] == f'bytes={half}-'


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
  body = _file_bytes(tmp_path)
  server.routes['/f.npz'] = Route(body, drop_first=100, ranges=False)
  path = _fetch('ViT-B_16', tmp_path / 'out', [_url_source(server, '/f.npz')])
  assert open(path, 'rb').read() == body


def test_stale_partial_longer_than_file_is_restarted(server, tmp_path):
  body = _file_bytes(tmp_path)
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'ViT-B_16.npz.gone-1-0.partial').write_bytes(b'x' * (len(body) + 10))
  server.routes['/f.npz'] = Route(body)
  path = _fetch('ViT-B_16', out, [_url_source(server, '/f.npz')])
  assert open(path, 'rb').read() == body


def test_short_body_is_rejected_and_nothing_is_under_final_name(server,
                                                                tmp_path):
  body = _file_bytes(tmp_path)
  server.routes['/f.npz'] = Route(body, announce=len(body) + 1000,
                                  ranges=False)
  out = tmp_path / 'out'
  with pytest.raises(hub.FetchError, match=f'of {len(body) + 1000} bytes'):
    _fetch('ViT-B_16', out, [_url_source(server, '/f.npz')], retries=2)
  assert not (out / 'ViT-B_16.npz').exists()


def test_wrong_sha256_is_rejected_and_deleted(server, tmp_path):
  body = _file_bytes(tmp_path)
  server.routes['/f.npz'] = Route(body)
  out = tmp_path / 'out'
  with pytest.raises(hub.FetchError, match='sha256'):
    _fetch('ViT-B_16', out, [_url_source(server, '/f.npz', sha256='0' * 64)])
  assert _leftovers(out) == []


def test_right_sha256_is_accepted(server, tmp_path):
  body = _file_bytes(tmp_path)
  server.routes['/f.npz'] = Route(body)
  digest = hashlib.sha256(body).hexdigest()
  path = _fetch('ViT-B_16', tmp_path / 'out',
                [_url_source(server, '/f.npz', sha256=digest)])
  assert open(path, 'rb').read() == body


def test_error_page_served_as_npz_is_rejected(server, tmp_path):
  server.routes['/f.npz'] = Route(b'<html>quota exceeded</html>')
  out = tmp_path / 'out'
  with pytest.raises(hub.FetchError, match='not an .npz'):
    _fetch('ViT-B_16', out, [_url_source(server, '/f.npz')])
  assert _leftovers(out) == []


# -------------------------------------------------------------- source order


def test_existing_local_file_is_used_without_any_request(server, tmp_path):
  (tmp_path / 'ViT-B_16.npz').write_bytes(b'anything')
  path = _fetch('ViT-B_16', tmp_path, [_url_source(server, '/f.npz')])
  assert path == str(tmp_path / 'ViT-B_16.npz')
  assert server.requests == []


def test_own_file_is_converted_into_place_and_force_replaces(tmp_path):
  # Width 192 (ViT-Ti's) tells the 3 heads of the file's flat q/k/v.
  _, params = _tiny_params(hidden_size=192, num_heads=3)
  mine = str(tmp_path / 'mine.safetensors')
  checkpoint.save(params, mine, layout='timm')
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'testing.npz').write_bytes(b'old')
  assert hub.main(['fetch', 'testing', '--pretrained_dir', str(out), '--quiet',
                   '--source', mine]) == 0
  assert (out / 'testing.npz').read_bytes() == b'old'  # Kept without --force.
  assert hub.main(['fetch', 'testing', '--pretrained_dir', str(out), '--quiet',
                   '--source', mine, '--force']) == 0
  loaded = checkpoint.load(str(out / 'testing.npz'))
  np.testing.assert_array_equal(loaded['cls'], params['cls'])


def test_403_and_404_fall_through_to_the_next_source(server, tmp_path):
  body = _file_bytes(tmp_path)
  server.routes['/refused.npz'] = Route(status=403)
  server.routes['/good.npz'] = Route(body)
  sources = [_url_source(server, '/refused.npz'),
             _url_source(server, '/missing.npz'),
             _url_source(server, '/good.npz')]
  path = _fetch('ViT-B_16', tmp_path / 'out', sources)
  assert open(path, 'rb').read() == body
  assert [r[1] for r in server.requests] == ['/refused.npz', '/missing.npz',
                                             '/good.npz']


def test_all_sources_failing_lists_each_and_the_manual_way(server, tmp_path):
  server.routes['/refused.npz'] = Route(status=403)
  sources = [_url_source(server, '/refused.npz'),
             _url_source(server, '/missing.npz'),
             hub.Source('url', _closed_port_url()),
             hub.Source('hf', 'google/vit-base-patch16-224-in21k',
                        'model.safetensors', 'transformers')]
  out = tmp_path / 'out'
  with pytest.raises(hub.FetchError) as error:
    _fetch('ViT-B_16', out, sources, hf_endpoint=server.url)
  message = str(error.value)
  for expected in ('HTTP 403', 'HTTP 404', 'offline?',
                   'hf://google/vit-base-patch16-224-in21k/model.safetensors',
                   '404', str(out / 'ViT-B_16.npz'), '--source'):
    assert expected in message
  assert not (out / 'ViT-B_16.npz').exists()


def test_unknown_name_says_which_names_have_sources(tmp_path):
  with pytest.raises(hub.FetchError, match='ViT-B_16'):
    hub.fetch('ViT-Q_3', str(tmp_path), progress=False)


def test_remote_https_pretrained_dir_is_tried_first(server, tmp_path):
  body = _file_bytes(tmp_path)
  server.routes['/mirror/ViT-B_16.npz'] = Route(body)
  cache = tmp_path / 'cache'
  path = hub.fetch('ViT-B_16', server.url + '/mirror/',
                   [_url_source(server, '/never.npz')], cache_dir=str(cache),
                   progress=False)
  assert path == str(cache / 'ViT-B_16.npz')
  assert [r[1] for r in server.requests] == ['/mirror/ViT-B_16.npz']


def test_gs_pretrained_dir_is_read_in_place(monkeypatch, tmp_path):
  monkeypatch.setattr(hub, '_remote_exists',
                      lambda path: path == 'gs://bucket/vit/ViT-B_16.npz')
  path = hub.fetch('ViT-B_16', 'gs://bucket/vit', [],
                   cache_dir=str(tmp_path), progress=False)
  assert path == 'gs://bucket/vit/ViT-B_16.npz'


# --------------------------------------------------- Hugging Face Hub sources


def _hub_route(server, repo, body, revision='main'):
  quoted = revision.replace('/', '%2F')
  path = f'/{repo}/resolve/{quoted}/model.safetensors'
  server.routes[path] = Route(body, hub=True)


@pytest.mark.parametrize('layout', convert.LAYOUTS)
def test_hub_file_is_read_from_the_hf_cache_without_a_copy(server, tmp_path,
                                                           layout):
  body = _file_bytes(tmp_path, layout=layout, num_heads=2)
  _hub_route(server, 'org/tiny', body, revision='refs/pr/1')
  out = tmp_path / 'out'
  source = hub.Source('hf', 'org/tiny', 'model.safetensors', layout,
                      revision='refs/pr/1')
  path = _fetch('testing', out, [source], hf_endpoint=server.url)
  assert path.startswith(str(out / 'hf-cache') + os.sep)
  assert open(path, 'rb').read() == body  # The Hub's file, as served.
  assert _leftovers(out) == []  # No second copy beside it.
  _, expected = _tiny_params()
  # num_heads=2: the file's flat q/k/v do not say, and width 16 is no size.
  loaded = checkpoint.flatten(checkpoint.load(path, num_heads=2))
  assert sorted(loaded) == sorted(checkpoint.flatten(expected))
  for key, value in checkpoint.flatten(expected).items():
    np.testing.assert_array_equal(loaded[key], value)


def test_a_later_run_finds_the_hub_file_offline(server, tmp_path):
  _hub_route(server, 'org/tiny', _file_bytes(tmp_path, layout='timm'))
  out = tmp_path / 'out'
  sources = [_url_source(server, '/bucket.npz'),
             hub.Source('hf', 'org/tiny', 'model.safetensors', 'timm')]
  first = _fetch('testing', out, sources, hf_endpoint=server.url)
  server.requests.clear()
  offline = [hub.Source('url', _closed_port_url()), sources[1]]
  again = _fetch('testing', out, offline, hf_endpoint=_closed_port_url())
  assert again == first
  assert server.requests == []
  assert hub.find_local('testing', str(out), offline,
                        hf_cache_dir=str(out / 'hf-cache')) == first


def test_hub_file_of_another_layout_than_declared_falls_through(server,
                                                                tmp_path):
  _hub_route(server, 'org/tiny', _file_bytes(tmp_path, layout='timm'))
  source = hub.Source('hf', 'org/tiny', 'model.safetensors', 'transformers')
  with pytest.raises(hub.FetchError, match='holds a timm state dict'):
    _fetch('testing', tmp_path / 'out', [source], hf_endpoint=server.url)


def test_hf_endpoint_env_var_redirects_the_hub(server, tmp_path, monkeypatch):
  _hub_route(server, 'org/tiny', _file_bytes(tmp_path, layout='timm'))
  monkeypatch.setenv('HF_ENDPOINT', server.url)
  path = _fetch('testing', tmp_path / 'out',
                [hub.Source('hf', 'org/tiny', 'model.safetensors')])
  assert os.path.exists(path)  # Layout None: told from the keys.


def test_fine_tuning_loads_the_fetched_hub_file(server, tmp_path):
  """As train.py: load_pretrained(the path fetch returns), heads from the
  model's config (width 16 is no named size)."""
  _hub_route(server, 'org/tiny', _file_bytes(tmp_path, layout='timm'))
  path = _fetch('testing', tmp_path / 'pretrained',
                [hub.Source('hf', 'org/tiny', 'model.safetensors', 'timm')],
                hf_endpoint=server.url)
  model, init = _tiny_params(seed=1)
  config = model_configs.model_config('ViT-Ti_16', **TINY)
  params = checkpoint.load_pretrained(pretrained_path=path,
                                      init_params=init, model_config=config)
  _, pretrained = _tiny_params(seed=0)
  np.testing.assert_array_equal(params['cls'], pretrained['cls'])
  assert model.apply({'params': params}, np.zeros((1, 32, 32, 3))).shape == (
      1, 10)


# ------------------------------------------------------------------------ CLI


def test_cli_fetch_uses_the_table_bucket_then_hub(server, tmp_path):
  """`python -m vit_jax.hub fetch ViT-B_16` with the real table: the
  bucket answers 403, the transformers repo on the (local) Hub works."""
  server.routes['/imagenet21k/ViT-B_16.npz'] = Route(status=403)
  # 24 wide: divisible by ViT-B's 12 heads, and small.
  body = _file_bytes(tmp_path, layout='transformers', hidden_size=24,
                     num_heads=12)
  _hub_route(server, 'google/vit-base-patch16-224-in21k', body)
  env = dict(os.environ, VIT_JAX_BUCKET_URL=server.url,
             HF_ENDPOINT=server.url, HF_HOME=str(tmp_path / 'hf-home'))
  out = tmp_path / 'checkpoints'
  result = subprocess.run(
      [sys.executable, '-m', 'vit_jax.hub', 'fetch', 'ViT-B_16',
       '--pretrained_dir', str(out), '--quiet'], env=env, capture_output=True,
      text=True, timeout=120, check=False,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert result.returncode == 0, result.stderr
  path = result.stdout.strip()
  assert path.startswith(str(tmp_path / 'hf-home') + os.sep)
  assert open(path, 'rb').read() == body
  assert os.listdir(out) == []  # No copy (nor .partial) beside the cache.
  assert 'HTTP 403' in result.stderr
  # (huggingface_hub may also call its /api/ routes; they are not files.)
  assert [r[1] for r in server.requests
          if r[0] == 'GET' and not r[1].startswith('/api/')] == [
      '/imagenet21k/ViT-B_16.npz',
      '/google/vit-base-patch16-224-in21k/resolve/main/model.safetensors']


def test_cli_failure_exits_1_with_the_message(tmp_path, capsys):
  code = hub.main(['fetch', 'ViT-B_16', '--pretrained_dir', str(tmp_path), '--quiet',
                   '--source', _closed_port_url()])
  assert code == 1
  err = capsys.readouterr().err
  error_lines = [l for l in err.splitlines() if l.startswith('Error:')]
  assert error_lines == [
      'Error: Could not get pretrained weights for ViT-B_16. Tried, in order:']
  assert 'offline?' in err and 'Traceback' not in err


def test_parse_source_understands_hub_urls_and_paths():
  assert hub.parse_source('hf://timm/vit_x.augreg/model.safetensors@v1') == (
      hub.Source('hf', 'timm/vit_x.augreg', 'model.safetensors',
                 revision='v1'))
  assert hub.parse_source('https://x/y.npz').kind == 'url'
  assert hub.parse_source('weights/mine.safetensors').kind == 'file'


def test_every_published_name_has_a_bucket_and_a_hub_source():
  # Mixer-B_32 has no i21k file (only SAM/GSAM ImageNet ones).
  published = {name for name in model_configs.MODEL_CONFIGS
               if '-gap-norep' not in name
               and name not in ('testing', 'testing-unpooled', 'Mixer-B_32')}
  assert set(hub.SOURCES) == published
  without_timm_weights = {'R26+ViT-B_32'}  # timm has it untrained only.
  for name, sources in hub.SOURCES.items():
    bucket = hub.MIXER_BUCKET if name.startswith('Mixer') else hub.BUCKET
    assert sources[0].location.startswith(bucket + '/')
    assert any(s.kind == 'hf' for s in sources) != (
        name in without_timm_weights)


def test_hub_sources_name_existing_timm_models_of_the_same_architecture():
  """Each timm/* repo is a timm model whose converted weights fit ours."""
  timm = pytest.importorskip('timm')
  for name in ('R+ViT-Ti_16', 'Mixer-B_16'):
    for source in hub.SOURCES[name]:
      if source.kind != 'hf':
        continue
      arch, _, tag = source.location.removeprefix('timm/').partition('.')
      assert f'{arch}.{tag}' in timm.list_pretrained(arch)
      torch_model = timm.create_model(arch, pretrained=False, num_classes=3)
      state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
      ours = jax.eval_shape(lambda n=name: models.get_model(n, 3).init(
          jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3))))['params']
      converted = convert.from_torch_layout(state, 'timm')
      assert {k: v.shape for k, v in converted.items()} == {
          k: v.shape for k, v in layout.flatten(ours).items()}


# ------------------------------------------------------- concurrent writers


def test_concurrent_writers_each_write_their_own_partial(server, tmp_path):
  """Two fetches of one file at once, with a stale partial file present.

  The server answers neither until both have asked, so the transfers overlap.
  With one shared `.partial`, both would append the second half to it.
  """
  body = _file_bytes(tmp_path)
  half = len(body) // 2
  out = tmp_path / 'out'
  out.mkdir()
  path = str(out / 'ViT-B_16.npz')
  (out / 'ViT-B_16.npz.gone-1-0.partial').write_bytes(body[:half])
  server.routes['/f.npz'] = Route(body)
  server.together = threading.Barrier(2, timeout=30)
  results, errors = [], []

  def fetch():
    try:
      results.append(hub.download(server.url + '/f.npz', path,
                                  progress=False))
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  writers = [threading.Thread(target=fetch) for _ in range(2)]
  for writer in writers:
    writer.start()
  for writer in writers:
    writer.join()
  assert not errors and results == [path, path]
  assert open(path, 'rb').read() == body
  ranges = sorted(str(request[2]) for request in server.requests)
  assert ranges == ['None', f'bytes={half}-']  # One resumed, one afresh.
  assert _leftovers(out) == ['ViT-B_16.npz']
