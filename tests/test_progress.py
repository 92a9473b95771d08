"""The progress display: a bar on a terminal, periodic lines in a log."""

import io

from absl import logging
import pytest

from vit_jax import progress


class _Terminal(io.StringIO):

  def isatty(self):
    return True


def _reporter(stream, every=4, total=8, enabled=True):
  clock = progress.Clock(0, total, batch=16)
  clock.start(1)
  return progress.Reporter(clock, every, enabled, stream=stream)


def test_on_a_terminal_the_bar_updates_in_place(caplog):
  terminal = _Terminal()
  reporter = _reporter(terminal)
  with caplog.at_level(logging.INFO):
    for step in range(2, 9):
      reporter.step(step, loss=2.0 / step)
    reporter.evaluated(8, accuracy=0.5, loss=1.25)
    reporter.close()
  shown = terminal.getvalue()
  # Each update rewrites the same line: a carriage return, no new line.
  updates = [part for part in shown.split('\r') if 'step ' in part]
  assert len(updates) >= 7
  assert 'step 8/8' in updates[-1] and 'loss 0.25' in shown
  assert 'img/s' in shown and 'ETA' in shown
  assert 'step 8/8 | test acc 50.00% | test loss 1.25\n' in shown
  assert 'test acc 50.0%' in updates[-1]  # The bar keeps the last accuracy.
  assert not caplog.records  # Nothing through the log on a terminal.


def test_in_a_log_lines_come_every_progress_every_steps(caplog):
  file = io.StringIO()  # Not a terminal.
  reporter = _reporter(file, every=4, total=10)
  with caplog.at_level(logging.INFO):
    for step in range(2, 11):
      reporter.step(step, loss=1.0)
    reporter.evaluated(10, accuracy=0.25, loss=2.0)
    reporter.close()
  lines = [r.getMessage() for r in caplog.records]
  assert [line.split(' | ')[0] for line in lines] == [
      'step 4/10', 'step 8/10', 'step 10/10', 'step 10/10']
  assert lines[-1] == 'step 10/10 | test acc 25.00% | test loss 2'
  assert file.getvalue() == ''


def test_other_processes_show_nothing(caplog):
  terminal = _Terminal()
  reporter = _reporter(terminal, enabled=False)
  with caplog.at_level(logging.INFO):
    for step in range(2, 9):
      reporter.step(step, loss=1.0)
    reporter.evaluated(8, accuracy=0.5, loss=1.0)
    with reporter.evaluating(3) as tick:
      tick()
    reporter.close()
  assert terminal.getvalue() == '' and not caplog.records


def test_rate_and_eta_start_after_compilation_and_skip_evaluation(
    monkeypatch):
  now = [100.0]
  monkeypatch.setattr(progress.time, 'monotonic', lambda: now[0])
  clock = progress.Clock(0, 101, batch=10)
  assert clock.images_per_second(1) is None and clock.eta(1) is None
  clock.start(1)  # Step 1 compiled: from here on, 1 s a step.
  now[0] += 50
  with clock.paused():  # An evaluation of 50 s.
    now[0] += 50
  assert clock.images_per_second(51) == pytest.approx(10.0)
  # The ETA counts evaluations: 100 s for 50 steps, 50 steps to go.
  assert clock.eta(51) == pytest.approx(100.0)


def test_summary_table_names_accuracy_time_speed_and_outputs(tmp_path):
  summary = {'steps': 400, 'accuracy_test': 0.41, 'best_accuracy_test': 0.43,
             'best_step': 200, 'train_loss': 1.5, 'seconds': 125.0,
             'wall_seconds': 190.0, 'img_sec': 321.0}
  table = progress.summary_table(summary, str(tmp_path),
                                 ['model.npz', 'curves.png'])
  lines = table.splitlines()
  assert lines[0] == 'Done.'
  assert 'final 41.00%   best 43.00% (step 200)' in table
  assert 'training 2m05s, whole command 3m10s' in table
  assert '321 img/s' in table and str(tmp_path) in table
  assert lines[-1].split() == ['model.npz,', 'curves.png']
