"""The training loop: config -> data + model + optimizer -> checkpoints, metrics.

One jit-compiled step runs data-parallel over a 1-D device mesh spanning all
devices of all processes: the batch is sharded along 'data', parameters and
optimizer state are replicated, and XLA inserts the gradient all-reduce (the
job `pmap` did in the original code). Everything random in a step derives
from (seed, step), and the batch at a step is chosen by (seed, step) too, so
a run resumed from a checkpoint ends with exactly the parameters of an
uninterrupted one, whatever the number of devices.
"""

import contextlib
import functools
import math
import os
import time
from typing import Callable, Optional

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import orbax.checkpoint as ocp

from vit_jax import budget
from vit_jax import checkpoint
from vit_jax import cluster
from vit_jax import fp8
from vit_jax import hub
from vit_jax import inference
from vit_jax import input_pipeline
from vit_jax import metrics
from vit_jax import models
from vit_jax import optim
from vit_jax import plots
from vit_jax import preemption
from vit_jax import preprocess
from vit_jax import progress
from vit_jax import recovery
from vit_jax import sharding
from vit_jax import utils
from vit_jax import workdir_lock
from vit_jax import xla_options
from vit_jax.configs import common


def make_update_fn(*, apply_fn, accum_steps, tx):
  """The original notebook's pmapped update step, for code written for it.

  Returns `update_fn_repl(params, opt_state, batch, rng) -> (params,
  opt_state, loss, new_rng)`, mapped over the local devices with `jax.pmap`
  (axis 'batch'; all arguments replicated or sharded along a leading device
  axis; `params` donated). `batch` is {'image', 'label' (one-hot)} as
  input_pipeline.get_data yields it; the loss is the mean cross-entropy,
  gradients are accumulated over `accum_steps` micro-batches
  (utils.accumulate_gradient) and averaged over devices, and `tx` is an
  optax optimizer. Dropout keys differ per device (folded with the device
  index) and `new_rng` is the next step's key. Our own trainer
  (`make_train_step`) shards one jitted step instead.
  """

  def update_fn(params, opt_state, batch, rng):
    _, new_rng = jax.random.split(rng)
    dropout_rng = jax.random.fold_in(rng, jax.lax.axis_index('batch'))

    def loss_fn(params, images, labels):
      logits = apply_fn({'params': params}, rngs={'dropout': dropout_rng},
                        inputs=images, train=True)
      log_probs = jax.nn.log_softmax(logits)
      return -jnp.mean(jnp.sum(log_probs * labels, axis=1))

    loss, grads = utils.accumulate_gradient(
        jax.value_and_grad(loss_fn), params, batch['image'], batch['label'],
        accum_steps)
    grads = jax.lax.pmean(grads, axis_name='batch')
    updates, opt_state = tx.update(grads, opt_state)
    params = optax.apply_updates(params, updates)
    loss = jax.lax.pmean(loss, axis_name='batch')
    return params, opt_state, loss, new_rng

  return jax.pmap(update_fn, axis_name='batch', donate_argnums=(0,))


def load_data(config) -> tuple[sharding.Split, sharding.Split]:
  train = sharding.Split(*input_pipeline.load_split(config, config.pp.train))
  test = sharding.Split(*input_pipeline.load_split(config, config.pp.test))
  logging.info('Data: %s %s: %d examples; %s: %d examples; %d classes.',
               config.dataset, config.pp.train, train.info.num_examples,
               config.pp.test, test.info.num_examples, train.info.num_classes)
  return train, test


def _stop_backbone_gradients(params):
  """Phase 1: only the head is differentiated, so XLA drops the backbone's
  backward pass (the optimizer's mask is what keeps the backbone frozen)."""
  return {k: v if k in optim.HEAD_KEYS else jax.lax.stop_gradient(v)
          for k, v in params.items()}


def _loss(params, model, images, targets, dropout_rng, frozen: bool):
  if frozen:
    params = _stop_backbone_gradients(params)
  logits = model.apply({'params': params}, images, train=True,
                       rngs={'dropout': dropout_rng})
  return optax.softmax_cross_entropy(logits, targets).mean()


def _gradients(params, model, images, targets, rng, accum_steps: int,
               frozen: bool = False):
  """Mean loss and gradients, accumulated over micro-batches if asked.

  frozen: the backbone's gradients are exact zeros and never computed.
  """
  grad_fn = functools.partial(jax.value_and_grad(_loss), model=model,
                              frozen=frozen)
  if accum_steps == 1:
    return grad_fn(params, images=images, targets=targets, dropout_rng=rng)

  def micro_batches(x):
    # Rows j*A+i form micro-batch i: each device keeps its own rows.
    x = x.reshape((x.shape[0] // accum_steps, accum_steps) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)

  def accumulate(carry, batch):
    i, micro_images, micro_targets = batch
    loss, grads = grad_fn(params, images=micro_images,
                          targets=micro_targets,
                          dropout_rng=jax.random.fold_in(rng, i))
    return jax.tree.map(jnp.add, carry, (loss, grads)), None

  zeros = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, params))
  (loss, grads), _ = jax.lax.scan(
      accumulate, zeros,
      (jnp.arange(accum_steps), micro_batches(images), micro_batches(targets)))
  return jax.tree.map(lambda x: x / accum_steps, (loss, grads))


def make_train_step(model, tx, config, num_classes: int,
                    frozen: bool) -> Callable:
  """A jitted step; `frozen` skips backbone gradients (phase 1).

  Freezing itself is the optimizer's job (optim.make_optimizer masks the
  backbone's updates to zero until freeze_steps). `frozen` only spares the
  backbone's gradients, which phase 1 does not use.
  """

  def train_step(state: inference.TrainState, images_u8, labels):
    rng = jax.random.fold_in(jax.random.key(config.seed), state.step)
    aug_rng, dropout_rng = jax.random.split(rng)
    images, targets = preprocess.train_batch(
        aug_rng, images_u8, labels, num_classes=num_classes,
        crop=config.pp.crop, aug=config.aug,
        resize=preprocess.resize_side(config.pp.crop, config.pp.resize))
    loss, grads = _gradients(state.params, model, images, targets,
                             dropout_rng, config.accum_steps, frozen)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    ema = state.ema_params
    if ema is not None:
      ema = optax.incremental_update(new_params, ema, 1 - config.ema_decay)
    # Finite loss and updates: the new state is safe to checkpoint.
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(updates))
    return state.replace(step=state.step + 1, params=new_params,
                         opt_state=opt_state, ema_params=ema), (loss, finite)

  return xla_options.jit(train_step, donate_argnums=(0,))


def _fresh_state(model, tx, config, replicated) -> inference.TrainState:
  """Pretrained weights if configured, else a random initialisation."""
  params = inference.init_params(model, config.pp.crop, config.seed,
                                 replicated)
  if config.pretrained_dir:
    # The file if it is there, else downloaded (bucket, then Hugging Face).
    path = cluster.fetch_pretrained(pretrained_name(config),
                                    config.pretrained_dir)
    logging.info('Loading pretrained weights from %s', path)
    init = sharding.to_host(params)
    loaded = checkpoint.flatten(checkpoint.load_pretrained(
        pretrained_path=path, init_params=init, model_config=config.model))
    # The model's arrays only: extra ones in the file (kept by the
    # original's load_pretrained) have no place in the training state.
    wanted = checkpoint.flatten(init)
    missing = sorted(set(wanted) - set(loaded))
    if missing:
      raise checkpoint.CheckpointError(
          f'{path} lacks {len(missing)} arrays this model needs: '
          f'{", ".join(missing[:8])}; use the file of this model.')
    params = jax.device_put(checkpoint.unflatten(
        {k: loaded[k] for k in wanted}), replicated)
  return inference.new_train_state(params, tx, bool(config.ema_decay),
                                   replicated)


def pretrained_name(config) -> str:
  """The file fine-tuning starts from (without .npz), as the original picks
  it: the model's name, or for AugReg configs `model_or_filename` (a file
  name, or a model name resolved to its best i21k file by index.csv)."""
  chosen = config.model_or_filename
  if not chosen:
    return config.model.model_name
  if '-' in chosen:
    return chosen
  return hub.best_augreg_file(chosen, config.pretrained_dir)


def initial_state(model, tx, config, manager, layout: recovery.Layout,
                  mesh) -> inference.TrainState:
  """Start-up order: resume from workdir -> pretrained -> from scratch."""
  replicated = NamedSharding(mesh, P())
  latest = manager.latest_step()
  if latest is None:
    return _fresh_state(model, tx, config, replicated)
  abstract = jax.eval_shape(
      lambda: _fresh_state(model, tx, _no_pretrained(config), replicated))
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      abstract)
  return recovery.restore_newest(manager, layout, abstract)


def _no_pretrained(config):
  """The config with pretrained loading off: only shapes are needed."""
  unlocked = config.copy_and_resolve_references()
  with unlocked.unlocked():
    unlocked.pretrained_dir = None
  return unlocked


def log_attention_plans(model: models.VisionTransformer, image_size: int):
  """Says once, at start, which attention kernel runs and why."""
  for train, phase in ((True, 'Training'), (False, 'Evaluation')):
    plan = models.attention_plan(model, image_size, train)
    logging.info('%s: %s.', phase, plan.describe())


def warn_if_fp8_emulated(model: models.VisionTransformer):
  """FP8 only pays on GPUs with FP8 GEMMs; elsewhere it is said once."""
  if model.fp8:
    warning = fp8.emulation_warning(jax.devices()[0])
    if warning:
      logging.warning(warning)


class NonFiniteLossError(FloatingPointError):
  """Raised when the loss becomes NaN or inf; checkpoints stay intact."""


class Trainer:
  """Holds a run's pieces so the loop below reads as the recipe it is."""

  def __init__(self, config, workdir: str):
    self.config = config
    self.workdir = workdir
    self.mesh = sharding.make_mesh()
    sharding.check_batch_sizes(config, self.mesh)
    self.train_split, self.test_split = load_data(config)
    num_classes = self.train_split.info.num_classes
    self.model = inference.make_model(config, num_classes)
    if isinstance(self.model, models.VisionTransformer):
      log_attention_plans(self.model, config.pp.crop)
      warn_if_fp8_emulated(self.model)
    self.tx = optim.make_optimizer(config)
    self.lr_fn = optim.learning_rate_fn(config)
    self.layout = recovery.layout_for(workdir)
    self.manager = ocp.CheckpointManager(
        self.layout.directory,
        options=self.layout.manager_options(
            max_to_keep=config.keep_checkpoints, create=True,
            cleanup_tmp_directories=True))  # Left by a killed save.
    self.state = initial_state(self.model, self.tx, config, self.manager,
                               self.layout, self.mesh)
    self.train_source = sharding.BatchSource(self.train_split, self.mesh,
                                             config.data_on_device)
    self.test_source = sharding.BatchSource(self.test_split, self.mesh,
                                            config.data_on_device)
    self.steps = {frozen: make_train_step(self.model, self.tx, config,
                                          num_classes, frozen)
                  for frozen in (False, True)}
    self.eval_step = inference.make_eval_step(self.model, config.pp.crop)
    self.writer = metrics.MetricWriter(workdir, jax.process_index() == 0)
    self.reporter = None  # A progress.Reporter while the loop runs.
    self.last_saved_step = None

  def train_batch(self, step: int):
    indices = input_pipeline.train_indices(
        self.config.seed, step, self.config.batch,
        self.train_split.info.num_examples)
    return self.train_source.get(indices)

  def eval_params(self):
    state = self.state
    return state.ema_params if state.ema_params is not None else state.params

  def evaluate(self) -> dict[str, float]:
    num_examples = self.test_split.info.num_examples
    if self.reporter is None:
      result = inference.evaluate(self.eval_step, self.eval_params(), self.test_source,
                        num_examples, self.config.batch_eval)
    else:
      batches = progress.eval_batches(num_examples, self.config.batch_eval)
      with self.reporter.evaluating(batches) as tick:
        result = inference.evaluate(self.eval_step, self.eval_params(),
                          _TickingSource(self.test_source, tick),
                          num_examples, self.config.batch_eval)
    return inference.eval_metrics(result, self.test_split.labels
                        if isinstance(self.test_split.labels, np.ndarray)
                        else sharding.to_host(self.test_split.labels))

  def use_config(self, config):
    """Rebuilds what depends on the schedule (a new total_steps); the
    state is kept: its structure does not depend on the schedule."""
    self.config = config
    self.tx = optim.make_optimizer(config)
    self.lr_fn = optim.learning_rate_fn(config)
    self.steps = {frozen: make_train_step(
        self.model, self.tx, config, self.train_split.info.num_classes,
        frozen) for frozen in (False, True)}

  def save_checkpoint(self, step: int):
    if self.last_saved_step == step:
      return
    with self.explain_failed_save():
      self.manager.save(step, args=ocp.args.StandardSave(self.state))
    self.last_saved_step = step

  def explain_failed_save(self):
    """Save errors (raised later when asynchronous) that say what to do."""
    return recovery.explain_failed_save(self.layout, self.state)


class _TickingSource:
  """A BatchSource that reports each batch it hands out (evaluation bar)."""

  def __init__(self, source: sharding.BatchSource, tick: Callable[[], None]):
    self._source, self._tick = source, tick

  def get(self, global_indices: np.ndarray):
    batch = self._source.get(global_indices)
    self._tick()
    return batch


def _check_finite(losses: np.ndarray, finite: np.ndarray, first_step: int,
                  trainer: Trainer):
  bad = np.flatnonzero(~finite)
  if bad.size:
    trainer.manager.wait_until_finished()
    latest = trainer.manager.latest_step()
    kept = (f'The last good checkpoint (step {latest}) in '
            f'{trainer.layout.step_path(latest)} is intact'
            if latest is not None else
            'No checkpoint had been written yet')
    raise NonFiniteLossError(
        f'Training diverged at step {first_step + int(bad[0]) + 1} (loss '
        f'{losses[bad[0]]}, or non-finite updates); stopping. {kept}; lower '
        'config.base_lr or raise config.warmup_steps, then restart.')


CONFIG_FILENAME = 'config.json'  # The run's resolved config, in the workdir.


def with_total_steps(config, total_steps: int):
  """The config of a run of `total_steps`; with config.eval_count, its
  evaluations and checkpoints spread evenly over those steps."""
  resolved = config.copy_and_resolve_references()
  resolved.total_steps = total_steps
  if config.eval_count:
    resolved.eval_every = resolved.checkpoint_every = budget.every(
        total_steps, config.eval_count)
  return resolved


_MEASURED_STEPS = 20  # Fixed, not timed: every process runs the same steps.


def _seconds(fn) -> float:
  begin = time.monotonic()
  jax.block_until_ready(fn())
  return time.monotonic() - begin


def measure_costs(trainer: Trainer, started: float) -> budget.Costs:
  """Times a training step and an evaluation, compiled, on this machine.

  The steps run on a copy of the state (a step donates its input) with the
  provisional schedule: the run itself starts untouched afterwards.
  """
  step_fn = trainer.steps[trainer.config.freeze_steps > 0]
  state = [jax.tree.map(jnp.copy, trainer.state)]

  def train_steps(steps):
    for step in steps:
      state[0], out = step_fn(state[0], *trainer.train_batch(step))
    return out

  compile_s = _seconds(lambda: train_steps([0]))
  step_s = _seconds(lambda: train_steps(range(1, 1 + _MEASURED_STEPS)))
  del state
  params, batch = trainer.eval_params(), trainer.config.batch_eval
  num_examples = trainer.test_split.info.num_examples
  measured = min(2 * batch, num_examples)
  run_eval = lambda n: inference.evaluate(trainer.eval_step, params,
                                          trainer.test_source, n, batch)
  _seconds(lambda: run_eval(batch))  # Compiles.
  per_batch = _seconds(lambda: run_eval(measured)) / math.ceil(measured /
                                                                batch)
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(trainer.state))
  return budget.Costs(
      elapsed=time.monotonic() - started, step=step_s / _MEASURED_STEPS,
      compile=compile_s,
      eval=per_batch * math.ceil(num_examples / batch),
      # Estimated, not timed (a test save would stay in the workdir).
      save=preemption.estimated_save_seconds(state_bytes))


def _from_process_0(value: int) -> int:
  """Process 0's value on every process (they must agree on the schedule)."""
  return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def choose_total_steps(trainer: Trainer, workdir: str, started: float) -> int:
  """total_steps for config.train_minutes: measured here, stored in workdir."""
  config = trainer.config
  costs = measure_costs(trainer, started)
  total = _from_process_0(budget.steps_within_budget(
      config.train_minutes, costs, max_steps=config.total_steps,
      eval_count=config.eval_count, eval_every=config.eval_every,
      checkpoint_every=config.checkpoint_every,
      compiles=1 + (config.freeze_steps > 0)))
  if jax.process_index() == 0:
    budget.store(workdir, total, config.train_minutes, costs)
  logging.info(
      'Time budget %.4g min: start-up %.1f s, a step %.4g s, an evaluation '
      '%.3g s, compiling %.3g s -> total_steps=%d (stored in %s).',
      config.train_minutes, costs.elapsed, costs.step, costs.eval,
      costs.compile, total, os.path.join(workdir, budget.FILENAME))
  return total


def _stored_total(config, workdir: str) -> Optional[int]:
  """The total chosen by this run's time budget before it was stopped."""
  if not config.train_minutes:
    return None
  stored = budget.load_total(workdir) if jax.process_index() == 0 else None
  stored = _from_process_0(stored or 0) or None
  if stored:
    logging.info('Keeping total_steps=%d, chosen for this run by its time '
                 'budget (%s).', stored, os.path.join(workdir,
                                                      budget.FILENAME))
  return stored


def make_trainer(config, workdir: str, started: float) -> Trainer:
  """A Trainer with the run's total_steps: from config.total_steps, or from
  the time budget (chosen now, or kept from before a restart)."""
  stored = _stored_total(config, workdir)
  trainer = Trainer(with_total_steps(config, stored or config.total_steps),
                    workdir)
  if config.train_minutes and not stored:
    total = choose_total_steps(trainer, workdir, started)
    trainer.use_config(with_total_steps(config, total))
  return trainer


def train_and_evaluate(config, workdir: str,
                       started: Optional[float] = None) -> dict[str, float]:
  """Trains (or resumes) a model per `config`; returns the final metrics.

  `started`: time.monotonic() when the command began, for
  config.train_minutes (default: now). One job per workdir: a second one is
  refused (workdir_lock.py).
  """
  started = time.monotonic() if started is None else started
  config = common.resolve(config)
  with _no_empty_folders_if_failed(workdir):
    with workdir_lock.hold(workdir,
                           60 * config.lock_stale_minutes) as heartbeat:
      return _train_and_evaluate(config, workdir, heartbeat, started)


@contextlib.contextmanager
def _no_empty_folders_if_failed(workdir: str):
  """Creates `workdir` if need be; a run that fails before writing anything
  (no weights to fetch, no data) removes the empty folders it made: the
  workdir itself, if this run made it (checkpoints are written into it,
  in no folder of their own). A workdir with files in it stays."""
  created = not os.path.isdir(workdir)
  os.makedirs(workdir, exist_ok=True)
  try:
    yield
  except BaseException:
    if created:
      try:
        os.rmdir(workdir)  # Only if empty.
      except OSError:
        pass
    raise


def _train_and_evaluate(config, workdir: str, heartbeat: Callable[[], None],
                        started: float) -> dict[str, float]:
  trainer = make_trainer(config, workdir, started)
  config = trainer.config
  start = int(sharding.to_host(trainer.state.step))
  total = config.total_steps
  is_main = jax.process_index() == 0
  announce(trainer, workdir, start)
  clock = progress.Clock(start, total, config.batch)
  reporter = progress.Reporter(clock, config.progress_every, is_main)
  trainer.reporter = reporter
  warn_if_save_exceeds_grace(trainer)
  pending, pending_from, interval_start = [], start, time.monotonic()
  summary = {}
  start_time = time.monotonic()
  signals = preemption.stop_on_signals(jax.process_count() > 1,
                                       trainer.manager.reached_preemption)
  with signals as stop_request, contextlib.closing(reporter):
    for step in range(start, total):
      images, labels = trainer.train_batch(step)
      frozen = step < config.freeze_steps
      trainer.state, loss = trainer.steps[frozen](trainer.state, images,
                                                  labels)
      pending.append(loss)
      done = step + 1
      if done == start + 1:
        jax.block_until_ready(loss)
        clock.start(done)  # Rate and ETA leave the compilation out.
      elif done == start + 2 and is_main:
        jax.block_until_ready(loss)  # One step timed: the run's length.
        warn_if_long_on_cpu(config, workdir, clock.eta(done), total - done)
      is_last = done == total
      # Every process asks at every step: they must agree where to stop.
      stopping = not is_last and stop_request.should_stop(done)
      flush = (done % config.progress_every == 0 or is_last or
               done % config.checkpoint_every == 0 or stopping)
      if flush:
        losses, finite = map(np.array, zip(*sharding.to_host(pending)))
        _check_finite(losses, finite, pending_from, trainer)
        elapsed = time.monotonic() - interval_start
        scalars = {
            'train_loss': float(losses.mean()),
            'learning_rate': float(trainer.lr_fn(step)),
            'img_sec_core_train': (len(losses) * config.batch / elapsed /
                                   jax.device_count()),
            'train_seconds': time.monotonic() - start_time,
        }
        trainer.writer.write(done, scalars)
        heartbeat()
        summary.update(scalars)
        pending, pending_from, interval_start = [], done, time.monotonic()
        reporter.step(done, scalars['train_loss'])
      elif reporter.wants_loss():
        _show_newest_finished(reporter, pending, pending_from)
      if (done % config.eval_every == 0 or is_last) and not stopping:
        eval_start = time.monotonic()
        scalars = trainer.evaluate()
        scalars['train_seconds'] = time.monotonic() - start_time
        interval_start += time.monotonic() - eval_start  # Keep img/s honest.
        trainer.writer.write(done, scalars)
        reporter.evaluated(done, scalars['accuracy_test'], scalars['loss_test'])
        _note_best(summary, scalars, done)
        summary.update(scalars)
        if is_main:
          draw_curves(workdir)
      if stopping:
        stop_after_saving(trainer, stop_request, done)
      if done % config.checkpoint_every == 0 or is_last:
        trainer.save_checkpoint(done)
  if start >= total:  # Already finished: evaluate the restored model.
    scalars = trainer.evaluate()
    _note_best(summary, scalars, total)
    summary.update(scalars)
  with trainer.explain_failed_save():
    trainer.manager.wait_until_finished()
  export(trainer, workdir)
  trainer.writer.close()
  summary['steps'] = total
  summary['seconds'] = time.monotonic() - start_time
  summary['wall_seconds'] = time.monotonic() - started  # The whole command.
  summary['img_sec'] = clock.images_per_second(total) or 0.0
  if is_main:
    draw_curves(workdir)
    logging.info('%s', progress.summary_table(summary, workdir,
                                              _outputs(workdir, trainer.layout)))
  return summary


def stop_after_saving(trainer: Trainer, stop_request: preemption.StopRequest,
                      step: int):
  """Saves `step` as a scheduled save would, flushes the metrics and raises
  Preempted (the workdir lock is released on the way out). An evaluation
  due at this step is skipped: the grace period is for the save."""
  preemption.abort_on_next_signal()  # A second signal: the old one stays.
  begin = time.monotonic()
  trainer.save_checkpoint(step)
  with trainer.explain_failed_save():
    trainer.manager.wait_until_finished()
  trainer.writer.close()
  logging.info('Saved the checkpoint of step %d in %.1f s.', step,
               time.monotonic() - begin)
  raise preemption.Preempted(stop_request.describe(), step,
                             trainer.layout.step_path(step))


def warn_if_save_exceeds_grace(trainer: Trainer):
  """One warning at start if a save after SIGTERM may outlast the grace
  period (estimated from the size of the state)."""
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(trainer.state))
  warning = preemption.grace_warning(
      state_bytes, trainer.config.preemption_grace_seconds,
      jax.process_count() > 1)
  if warning and jax.process_index() == 0:
    logging.warning('%s', warning)


def _show_newest_finished(reporter: progress.Reporter, pending: list,
                          pending_from: int):
  """The bar shows the newest step that has finished, without waiting:
  steps run ahead of the loop, and waiting here would stall them."""
  for i in reversed(range(len(pending))):
    loss = pending[i][0]
    if loss.is_ready():
      reporter.step(pending_from + i + 1, float(sharding.to_host(loss)))
      return


def _note_best(summary: dict[str, float], scalars: dict[str, float],
               step: int):
  if scalars['accuracy_test'] > summary.get('best_accuracy_test', -1.0):
    summary['best_accuracy_test'] = scalars['accuracy_test']
    summary['best_step'] = step


LONG_ON_CPU_HOURS = 1.0  # A CPU run longer than this names the CPU preset.


def long_on_cpu_warning(config, workdir: str, backend: str,
                        seconds_left: float, steps_left: int
                        ) -> Optional[str]:
  """The warning for a recipe sized for an accelerator that was started on
  a CPU (days on 2 cores, silently otherwise): the time it will take and the
  preset meant for CPUs. None on accelerators, for runs with a time budget
  (train_minutes keeps them to it) and for runs under LONG_ON_CPU_HOURS.
  """
  if (backend != 'cpu' or config.train_minutes or
      seconds_left < 3600 * LONG_ON_CPU_HOURS):
    return None
  if config.cpu_preset:
    way_out = ('For a CPU, train the preset meant for it: python -m '
               f'vit_jax.main --config {config.cpu_preset} --workdir '
               f'{workdir.rstrip("/")}_cpu')
  else:
    way_out = ('This recipe has no preset for CPUs: lower '
               '--config.total_steps, give --config.train_minutes a budget, '
               'or run it on a GPU or TPU')
  return (f'This recipe is sized for an accelerator: on this CPU its '
          f'{steps_left} steps left take about '
          f'{progress.format_duration(seconds_left)} '
          f'({seconds_left / steps_left:.3g} s a step). {way_out}.')


def warn_if_long_on_cpu(config, workdir: str, seconds_left: float,
                        steps_left: int):
  """Logs `long_on_cpu_warning` for this process's backend, if any."""
  warning = long_on_cpu_warning(config, workdir, jax.default_backend(),
                                seconds_left, steps_left)
  if warning:
    logging.warning('%s', warning)


def announce(trainer: Trainer, workdir: str, start: int):
  """config.json in the workdir (the run's whole config, resolved) and one
  line on the console in its place."""
  config = trainer.config
  if jax.process_index() != 0:
    return
  with open(os.path.join(workdir, CONFIG_FILENAME), 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True) + '\n')
  num_params = sum(x.size for x in jax.tree.leaves(trainer.state.params))
  logging.info('%s', progress.run_line(
      config.model.model_name, num_params, config.dataset,
      trainer.train_split.info.num_examples,
      trainer.test_split.info.num_examples, start, config.total_steps,
      jax.device_count(), jax.process_count()))


def draw_curves(workdir: str):
  """workdir/curves.png; a plotting failure is a warning, not a lost run."""
  try:
    plots.write_curves(workdir)
  except (OSError, ValueError, RuntimeError) as e:
    logging.warning('Could not draw %s: %s', plots.FILENAME, e)


def _outputs(workdir: str, layout: recovery.Layout) -> list[str]:
  """The files of the run and its checkpoint folders, relative to workdir."""
  names = ('model.npz', 'run.json', CONFIG_FILENAME, 'metrics.jsonl',
           plots.FILENAME)
  folders = [os.path.relpath(layout.step_path(step), workdir) + '/'
             for step in layout.finished_steps()]
  return [name for name in names
          if os.path.exists(os.path.join(workdir, name))] + folders


def export(trainer: Trainer, workdir: str):
  """model.npz (published layout) and run.json (what predict needs)."""
  params = sharding.to_host(trainer.eval_params())
  if jax.process_index() != 0:
    return
  inference.save_model(workdir, params, inference.RunRecord.from_config(
      trainer.config, trainer.train_split.info))
