"""Tests for vit_jax.benchmark: a tiny model through the real steps."""

import json

import pytest

from vit_jax import benchmark
from vit_jax import models
from vit_jax import speed

# --no-reuse_host_memory: malloc settings are the command line's, not the
# test process's.
_TINY = ['--model_name', 'testing', '--image_size', '32', '--batch', '4',
         '--steps', '2', '--warmup', '1', '--rounds', '2',
         '--no-reuse_host_memory']


@pytest.mark.parametrize('mode', ['train', 'infer'])
def test_report_has_positive_speed_flops_and_mfu(mode):
  report = speed.run(benchmark.parse_args(
      _TINY + ['--mode', mode, '--peak_tflops', '1.0']))
  assert report['mode'] == mode
  assert len(report['rounds_img_per_s']) == 2
  for key in ('img_per_s', 'img_per_s_per_device', 'model_tflops_per_s',
              'model_gflops_per_image', 'xla_gflops_per_image', 'mfu',
              'compile_s', 'peak_memory_gb', 'compiled_memory_gb'):
    assert report[key] > 0, key
  assert report['peak_source'] == 'flag'
  assert 'timm' not in report
  load = report['load_average_at_start']  # Linux has load averages.
  assert len(load) == 3 and all(value >= 0 for value in load), load


def test_train_counts_three_forward_passes():
  config = models.get_model('ViT-B_16', 1000)
  forward = speed.forward_flops(config, 224, 1000)
  # ~17.6 GMACs: the published ViT-B/16 figure.
  assert 35e9 < forward < 35.3e9
  assert speed.step_flops(config, 224, 1000, 'infer') == forward
  assert speed.step_flops(config, 224, 1000, 'train') == 3 * forward


@pytest.mark.parametrize('fp8', [False, True])
def test_main_prints_a_table_then_one_json_line(capsys, tmp_path, fp8):
  out = tmp_path / 'bench.jsonl'
  benchmark.main(_TINY + ['--mode', 'infer', '--json_out', str(out)]
                 + ['--fp8'] * fp8)
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[0].startswith('model')
  assert ('with FP8 matmuls' in lines[0]) == fp8
  printed = json.loads(lines[-1])
  assert printed == json.loads(out.read_text())
  assert printed['model'] == 'testing'
  assert printed['fp8'] == fp8


def test_compare_timm_without_torch_says_how_to_get_it(monkeypatch):
  monkeypatch.setitem(__import__('sys').modules, 'torch', None)
  args = benchmark.parse_args(_TINY + ['--compare', 'timm'])
  with pytest.raises(SystemExit, match='pip install'):
    speed.TimmRunner(args, models.get_model('testing', 10))
