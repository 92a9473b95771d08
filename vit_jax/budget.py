"""A wall-clock budget instead of a step count (config.train_minutes).

A preset that promises "N minutes on 2 CPU cores" cannot fix its step count:
the same preset trains ~950 img/s on one 2-core machine and ~550 on another.
With `train_minutes` set, the run measures on this machine, after compiling,
how long a training step and an evaluation take, and chooses the largest
total_steps whose whole schedule (warm-up + decay), evaluations, checkpoints
and export end inside the budget, counted from the command's start (data
loading and compiling included). `config.total_steps` is then the most it may
choose.

The choice is stored in <workdir>/budget.json: a resumed run keeps it instead
of measuring again, so its schedule, and therefore its parameters, are those
of the uninterrupted run.
"""

import dataclasses
import json
import math
import os
from typing import Optional

FILENAME = 'budget.json'

# Kept free for what the short measurement cannot see: a machine whose speed
# wanders (on a shared 2-core VM one run's rate moved between 790 and 1,085
# img/s, 100 steps at a time, and its 20 measured steps fell at 1,019, ~13%
# above the run's mean; BENCHMARKS.md), and the interpreter's start before
# the clock began.
MARGIN = 0.15


class NoTimeToTrainError(ValueError):
  """The budget is used up before the first step; says where it went."""


@dataclasses.dataclass(frozen=True)
class Costs:
  """Seconds measured on this machine before training starts."""
  elapsed: float  # Since the command began: start-up, data, compiling, measuring.
  step: float  # One training step (batch gather included).
  compile: float  # Compiling a training step (done again for the chosen schedule).
  eval: float  # One evaluation of the whole test split.
  save: float  # One checkpoint, or the final export.


def steps_within_budget(train_minutes: float, costs: Costs, *, max_steps: int,
                        eval_count: int, eval_every: int,
                        checkpoint_every: int, compiles: int = 1) -> int:
  """The most training steps whose run ends within `train_minutes`.

  Evaluations and checkpoints: `eval_count` of each when set, else one per
  `eval_every` / `checkpoint_every` steps; one more of each at the end, and
  the export. `compiles` training steps are compiled again before training.
  """
  usable = (train_minutes * 60 * (1 - MARGIN) - costs.elapsed -
            compiles * costs.compile - costs.save)
  if eval_count:
    usable -= eval_count * (costs.eval + costs.save)
    per_step = costs.step
  else:
    usable -= costs.eval + costs.save
    per_step = (costs.step + costs.eval / eval_every +
                costs.save / checkpoint_every)
  steps = math.floor(usable / per_step) if usable > 0 else 0
  if steps < 1:
    raise NoTimeToTrainError(
        f'config.train_minutes={train_minutes} leaves no time to train: '
        f'{costs.elapsed:.0f} s went to start-up, data loading and '
        f'measuring, a step takes {costs.step:.3g} s, an evaluation '
        f'{costs.eval:.3g} s and compiling {costs.compile:.3g} s. Raise '
        'config.train_minutes, or set it to 0 and choose config.total_steps.')
  return min(steps, max_steps)


def every(total_steps: int, count: int) -> int:
  """Steps between `count` events spread evenly over `total_steps`."""
  return max(1, math.ceil(total_steps / count))


def load_total(workdir: str) -> Optional[int]:
  """The total_steps chosen earlier in this workdir, if any."""
  path = os.path.join(workdir, FILENAME)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return int(json.load(f)['total_steps'])


def store(workdir: str, total_steps: int, train_minutes: float, costs: Costs):
  """Writes the choice and what it was based on (atomically)."""
  path = os.path.join(workdir, FILENAME)
  record = {'total_steps': total_steps, 'train_minutes': train_minutes,
            'measured_seconds': dataclasses.asdict(costs)}
  with open(path + '.tmp', 'w') as f:
    json.dump(record, f, indent=2)
  os.replace(path + '.tmp', path)
