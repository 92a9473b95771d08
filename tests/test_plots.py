"""curves.png: drawn from metrics.jsonl, readable, rewritten as runs go."""

import json
import os
import struct

import pytest

from vit_jax import plots

_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def _png_size(path):
  with open(path, 'rb') as f:
    header = f.read(24)
  assert header[:8] == _PNG_SIGNATURE
  return struct.unpack('>II', header[16:24])


def _records(steps, seconds_per_step=2.0):
  for step in steps:
    yield {'step': step, 'train_loss': 2.0 / step, 'learning_rate': 0.1,
           'img_sec_core_train': 100.0,
           'train_seconds': step * seconds_per_step}
    if step % 4 == 0:
      yield {'step': step, 'accuracy_test': step / 100, 'loss_test': 1.0,
             'train_seconds': step * seconds_per_step + 1}


def _write_metrics(workdir, records):
  with open(os.path.join(workdir, plots.METRICS), 'a') as f:
    for record in records:
      f.write(json.dumps(record) + '\n')


def test_write_curves_makes_a_png_of_sensible_size(tmp_path):
  _write_metrics(tmp_path, _records(range(1, 9)))
  path = plots.write_curves(str(tmp_path))
  assert path == str(tmp_path / 'curves.png')
  width, height = _png_size(path)
  assert 800 <= width <= 2000 and 400 <= height <= 1200
  assert 20_000 < os.path.getsize(path) < 1_000_000
  assert not os.path.exists(path + '.tmp')


def test_write_curves_redraws_with_new_metrics(tmp_path):
  _write_metrics(tmp_path, _records(range(1, 5)))
  with open(plots.write_curves(str(tmp_path)), 'rb') as f:
    first = f.read()
  _write_metrics(tmp_path, _records(range(5, 9)))
  with open(plots.write_curves(str(tmp_path)), 'rb') as f:
    assert f.read() != first


def test_no_metrics_yet_means_no_curves(tmp_path):
  assert plots.write_curves(str(tmp_path)) is None
  (tmp_path / plots.METRICS).write_text('')
  assert plots.write_curves(str(tmp_path)) is None
  assert not (tmp_path / 'curves.png').exists()


def test_series_keeps_the_last_record_of_a_step_and_continues_time():
  killed = list(_records(range(1, 7)))  # Killed after step 6 (60 s in).
  resumed = list(_records(range(5, 9)))  # Resumed from step 4's checkpoint.
  data = plots.series(killed + resumed)
  assert sorted(data['train_loss']) == list(range(1, 9))
  # Step 5 of the resumed run: its clock restarted at 0, and continues
  # from the last time the killed run recorded (6 * 2 = 12 s).
  assert data['train_loss'][5] == pytest.approx(((12 + 10) / 60, 0.4))
  assert data['accuracy_test'][8][1] == 0.08
  assert 'train_seconds' not in data and 'step' not in data


def test_a_line_cut_short_by_a_kill_is_skipped(tmp_path):
  _write_metrics(tmp_path, _records(range(1, 3)))
  with open(tmp_path / plots.METRICS, 'a') as f:
    f.write('{"step": 3, "train_lo')
  assert len(plots.read_metrics(str(tmp_path / plots.METRICS))) == 2
