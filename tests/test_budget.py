"""Tests for vit_jax.budget: sizing total_steps to a wall-clock budget."""

import pytest

from vit_jax import budget

# 2 minutes less the 15% margin: 102 s; less start-up 30, one compile 4 and
# the export 1: 67 s for steps, evaluations and checkpoints.
_COSTS = budget.Costs(elapsed=30.0, step=0.25, compile=4.0, eval=5.0,
                      save=1.0)


def _steps(minutes=2.0, costs=_COSTS, **kwargs):
  settings = dict(max_steps=10_000, eval_count=4, eval_every=100,
                  checkpoint_every=200)
  return budget.steps_within_budget(minutes, costs, **{**settings, **kwargs})


def test_evaluation_count_is_paid_up_front():
  assert _steps() == 172  # (67 - 4 x (5 + 1)) / 0.25.


def test_evaluations_by_interval_are_paid_per_step():
  # (67 - 5 - 1) / (0.25 + 5/100 + 1/200) = 200.0.
  assert _steps(eval_count=0) == 200


def test_a_second_compile_is_paid_for():
  assert _steps(compiles=2) == 156  # (67 - 4 - 24) / 0.25.


def test_total_steps_is_the_most_it_chooses():
  assert _steps(max_steps=100) == 100


@pytest.mark.parametrize('img_per_s, expected', [(950, 5336), (550, 3089)])
def test_fifteen_minutes_on_a_fast_and_a_slow_machine(img_per_s, expected):
  costs = budget.Costs(elapsed=20.0, step=128 / img_per_s, compile=5.0,
                       eval=4.0, save=1.0)
  steps = _steps(15.0, costs)
  assert steps == expected  # 719 s / step time.
  planned = (costs.elapsed + costs.compile + steps * costs.step +
             4 * (costs.eval + costs.save) + costs.save)
  assert planned <= 15 * 60 * (1 - budget.MARGIN)


def test_a_budget_too_small_to_train_says_what_took_the_time():
  with pytest.raises(budget.NoTimeToTrainError,
                     match=r'train_minutes=0.5 leaves no time '
                     r'to train: 30 s went to start-up'):
    _steps(0.5)


def test_events_spread_evenly_cover_the_run():
  assert budget.every(6004, 4) == 1501
  assert budget.every(3, 4) == 1


def test_stored_total_is_read_back(tmp_path):
  assert budget.load_total(str(tmp_path)) is None
  budget.store(str(tmp_path), 3476, 15.0, _COSTS)
  assert budget.load_total(str(tmp_path)) == 3476
