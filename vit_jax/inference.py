"""A trained model as a library: built, saved, loaded, evaluated, asked.

What training and the command-line tools share, in one place:
- one way to build the model and its initial parameters and TrainState
  (training, the benchmark, and the shape check of a loaded file);
- a finished run's files: `model.npz` (published layout) and `run.json`, a
  typed `RunRecord` written by training and read by `load_model`;
- `load_model`: a workdir or a bare parameter file -> `TrainedModel` (for a
  bare file the architecture, classes and image size are read off the
  arrays);
- the evaluation loop over the device mesh (training's evaluations and
  `vit_jax.evaluate` run the same code), and the prediction helpers.
"""

import dataclasses
import json
import os
from typing import Any, Callable, Optional, Sequence

import flax
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import optax

from vit_jax import checkpoint
from vit_jax import image_io
from vit_jax import input_pipeline
from vit_jax import layout
from vit_jax import models
from vit_jax import preprocess
from vit_jax import sharding
from vit_jax import xla_options
from vit_jax.configs import common
from vit_jax.configs import models as model_configs

RUN_FILE = 'run.json'
MODEL_FILE = 'model.npz'


# ------------------------------------------------------ The model and state.


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any  # None unless config.ema_decay > 0.


MODEL_CLASSES = {'ViT': models.VisionTransformer, 'Mixer': models.MlpMixer}


def model_class(model_type: str) -> type:
  """config.model_type -> the module class (the original's choice)."""
  if model_type not in MODEL_CLASSES:
    raise ValueError(f'config.model_type must be one of '
                     f'{sorted(MODEL_CLASSES)}, got {model_type!r}.')
  return MODEL_CLASSES[model_type]


def make_model(config, num_classes: int) -> models.Model:
  """The module of config.model, as the original's train.py builds it."""
  return model_class(config.model_type)(num_classes=num_classes,
                                        **config.model)


def init_params(model, image_size: int, seed: int, out_sharding=None):
  """Random parameters for `image_size` images, placed by `out_sharding`."""
  init = lambda: model.init(jax.random.key(seed),
                            jnp.zeros((1, image_size, image_size, 3)))['params']
  return jax.jit(init, out_shardings=out_sharding)()


def new_train_state(params, tx: optax.GradientTransformation, ema: bool,
                    out_sharding) -> TrainState:
  """Step 0: the optimizer's initial state and, if asked, an EMA copy."""
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=tx.init(params),
                     ema_params=jax.tree.map(jnp.copy, params) if ema
                     else None)
  return jax.device_put(state, out_sharding)


def _inference_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
  """Training-only options off: float32, default attention, no remat (ViT
  options; a Mixer has none)."""
  if 'transformer' not in overrides and 'hidden_size' not in overrides:
    return dict(overrides)
  return {**overrides, 'dtype': 'float32', 'attention_impl': 'auto',
          'remat': False}


# ------------------------------------------------------------------ run.json.


@dataclasses.dataclass(frozen=True)
class RunRecord:
  """run.json: what a finished run's model.npz needs to be used again."""
  model_name: str
  model: dict[str, Any]  # config.model, as trained.
  num_classes: int
  class_names: tuple[str, ...]
  image_size: int  # Side of the square images the model sees.
  dataset: Optional[str] = None
  tfds_data_dir: Optional[str] = None
  split_test: Optional[str] = None  # The split evaluated during training.
  source_size: Optional[int] = None
  model_type: str = 'ViT'  # config.model_type.

  @classmethod
  def from_config(cls, config,
                  info: input_pipeline.DatasetInfo) -> 'RunRecord':
    return cls(model_name=config.model.model_name,
               model=config.model.to_dict(), model_type=config.model_type,
               num_classes=info.num_classes,
               class_names=tuple(info.class_names),
               image_size=config.pp.crop, dataset=config.dataset,
               tfds_data_dir=config.tfds_data_dir, split_test=config.pp.test,
               source_size=config.pp.source_size)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2)

  @classmethod
  def from_json(cls, text: str, path: str = RUN_FILE) -> 'RunRecord':
    """Parses run.json; `path` names the file in errors."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    try:
      record = json.loads(text)
    except json.JSONDecodeError as e:
      raise checkpoint.CheckpointError(f'{path} is not JSON ({e}).') from None
    if not isinstance(record, dict):
      raise checkpoint.CheckpointError(f'{path} holds no JSON object.')
    required = [name for name, f in fields.items()
                if f.default is dataclasses.MISSING]
    missing = [name for name in required if name not in record]
    unknown = sorted(set(record) - set(fields))
    if missing or unknown:
      raise checkpoint.CheckpointError(
          f'{path} is not a run record: missing {missing}, unknown '
          f'{unknown} (vit_jax.main writes it at the end of training).')
    return cls(**{**record, 'class_names': tuple(record['class_names'])})


def save_model(workdir: str, params, record: RunRecord):
  """A finished run's files: model.npz and run.json, read by load_model."""
  checkpoint.save(params, os.path.join(workdir, MODEL_FILE))
  with open(os.path.join(workdir, RUN_FILE), 'w') as f:
    f.write(record.to_json())


# ------------------------------------------------------------------- Loading.


@dataclasses.dataclass(frozen=True)
class TrainedModel:
  """A classifier ready to run: module, parameters and what it was trained on."""
  model: models.VisionTransformer
  params: Any  # Linen tree of numpy arrays.
  image_size: int  # Side of the square images the model sees.
  class_names: tuple[str, ...]
  path: str  # The parameter file, for messages.
  run: Optional[RunRecord]  # None for a bare parameter file.

  @property
  def num_classes(self) -> int:
    return self.model.num_classes


def require_workdir(workdir: str):
  """A --workdir that is not a folder is a missing (or mistyped) run, not
  a model name to download, which is what a missing file would be told."""
  if not checkpoint.is_remote(workdir) and not os.path.isdir(workdir):
    what = ('is a file, not a run folder' if os.path.exists(workdir) else
            'does not exist')
    raise FileNotFoundError(
        f'--workdir {workdir!r} {what}. Pass the workdir of a '
        'finished vit_jax.main run (it holds model.npz and run.json), or a '
        'parameter file with --checkpoint.')


def load_from_args(args) -> TrainedModel:
  """The model named by cli.Parser.add_trained_model's flags."""
  if args.workdir:
    require_workdir(args.workdir)
  return load_model(args.workdir or args.checkpoint, args.model_name,
                    args.labels)


def load_model(path: str, model_name: Optional[str] = None,
               labels_file: Optional[str] = None) -> TrainedModel:
  """A workdir (model.npz + run.json) or a parameter file -> TrainedModel."""
  if os.path.isdir(path):
    trained = _load_workdir(path, model_name)
  else:
    trained = _load_file(path, model_name)
  if labels_file:
    trained = dataclasses.replace(
        trained, class_names=read_labels(labels_file, trained.num_classes))
  return trained


def _load_workdir(workdir: str, model_name: Optional[str]) -> TrainedModel:
  run_path = os.path.join(workdir, RUN_FILE)
  params_path = os.path.join(workdir, MODEL_FILE)
  for needed in (run_path, params_path):
    if not os.path.exists(needed):
      raise FileNotFoundError(
          f'{workdir} is not a finished run: {os.path.basename(needed)} is '
          'missing (vit_jax.main writes model.npz and run.json at the end of '
          'training). Pass a workdir of a finished run or a parameter file.')
  with open(run_path) as f:
    run = RunRecord.from_json(f.read(), run_path)
  if model_name and model_name != run.model_name:
    raise checkpoint.CheckpointError(
        f'--model_name={model_name} but {workdir} trained '
        f'{run.model_name}; leave --model_name out for a workdir.')
  model = _model_of_run(run)
  params = checkpoint.load(params_path)
  _check_fits(model, params, run.image_size, params_path)
  names = run.class_names or default_names(run.num_classes)
  return TrainedModel(model, params, run.image_size, names, params_path, run)


def _model_of_run(run: RunRecord) -> models.Model:
  """The module a run trained, for inference (float32, default kernels).

  run.json files written before the model config took the original's nested
  form hold flat overrides of a named size; they are read through
  `model_config`.
  """
  nested = 'patches' in run.model
  config = (run.model if nested else model_configs.model_config(
      run.model_name, **run.model).to_dict())
  return model_class(run.model_type)(num_classes=run.num_classes,
                                     **_inference_overrides(config))


def _load_file(path: str, model_name: Optional[str]) -> TrainedModel:
  params = checkpoint.load(path)
  found = layout.architecture_of(params, path)
  num_classes = found.pop('num_classes')
  image_size = found.pop('image_size')
  if model_name:
    # Sizes from the table, head layout (classifier, pre_logits) from the file.
    head = {k: found[k] for k in ('classifier', 'representation_size')}
    model = models.get_model(model_name, num_classes,
                             **_inference_overrides(head))
  else:
    arch = model_configs.vit_config(model_name=layout.describe(
        checkpoint.flatten(params)), **found)
    model = models.VisionTransformer(num_classes=num_classes, **arch)
  _check_fits(model, params, image_size, path)
  return TrainedModel(model, params, image_size, default_names(num_classes),
                      path, None)


def _check_fits(model, params, image_size: int, path: str):
  """Raises CheckpointError naming every key or shape that does not fit."""
  expected = jax.eval_shape(lambda: init_params(model, image_size, seed=0))
  checkpoint.check_compatible(checkpoint.flatten(params),
                              checkpoint.flatten(expected), path)


def default_names(num_classes: int) -> tuple[str, ...]:
  return tuple(f'class_{i}' for i in range(num_classes))


def read_labels(path: str, num_classes: int) -> tuple[str, ...]:
  """One class name per line (blank lines ignored), as many as the classes."""
  with open(path) as f:
    names = tuple(line.strip() for line in f if line.strip())
  if len(names) != num_classes:
    raise ValueError(f'{path} has {len(names)} class names but the model has '
                     f'{num_classes} classes (one name per line).')
  return names


# ----------------------------------------------------------------- Evaluation.


def make_eval_step(model, crop: int) -> Callable:
  """Per-example predictions and losses for a batch of uint8 images."""

  def eval_step(params, images_u8, labels):
    images = preprocess.eval_images(images_u8, crop)
    logits = model.apply({'params': params}, images, train=False)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return logits.argmax(-1), losses

  return xla_options.jit(eval_step)


def evaluate(eval_step, params, source: sharding.BatchSource,
             num_examples: int, batch: int) -> dict[str, Any]:
  """Runs every example of a split exactly once (padded last batch masked)."""
  predictions, losses, indices = [], [], []
  for batch_indices, mask in input_pipeline.eval_batches(num_examples, batch):
    images, labels = source.get(batch_indices)
    preds, batch_losses = eval_step(params, images, labels)
    gathered = multihost_utils.process_allgather((preds, batch_losses),
                                                 tiled=True)
    predictions.append(gathered[0][mask])
    losses.append(gathered[1][mask])
    indices.append(batch_indices[mask])
  return {'predictions': np.concatenate(predictions),
          'losses': np.concatenate(losses),
          'indices': np.concatenate(indices)}


def eval_metrics(result: dict[str, Any], labels: np.ndarray) -> dict[str, float]:
  correct = result['predictions'] == np.asarray(labels)[result['indices']]
  return {'accuracy_test': float(correct.mean()),
          'loss_test': float(result['losses'].mean())}


def data_config(trained: TrainedModel, dataset: Optional[str],
                tfds_data_dir: Optional[str], source_size: Optional[int],
                batch: int):
  """The config keys that input_pipeline and the eval step read."""
  run = trained.run  # None for a bare file: the flags say it all.
  config = common.get_config()
  config.pp = common.pp_config(crop=trained.image_size)
  config.dataset = dataset or (run and run.dataset)
  if not config.dataset:
    raise ValueError('No dataset: pass --dataset (a TFDS name or an image '
                     'folder) when evaluating a bare parameter file.')
  config.tfds_data_dir = tfds_data_dir or (run and run.tfds_data_dir)
  config.pp.source_size = source_size or (run and run.source_size)
  devices = jax.device_count()
  config.batch_eval = -(-batch // devices) * devices  # A multiple of devices.
  return config


def evaluate_split(trained: TrainedModel, config, split: str):
  """Every example of `split` once, on all devices of all processes.

  Returns the per-example result of `evaluate`, the split's labels and the
  class names (a bare file knows none; the dataset does).
  """
  images, labels, info = input_pipeline.load_split(config, split)
  if info.num_classes != trained.num_classes:
    raise checkpoint.CheckpointError(
        f'{trained.path} has {trained.num_classes} classes but dataset '
        f'{config.dataset!r} has {info.num_classes}; evaluate it on the '
        'dataset it was trained on.')
  mesh = sharding.make_mesh()
  params = sharding.replicate(trained.params, mesh)
  source = sharding.BatchSource(sharding.Split(images, labels, info), mesh,
                                on_device=False)
  eval_step = make_eval_step(trained.model, trained.image_size)
  result = evaluate(eval_step, params, source, info.num_examples,
                    config.batch_eval)
  names = trained.class_names if trained.run else info.class_names
  return result, labels, names


# ----------------------------------------------------------------- Prediction.


def make_predict_fn(trained: TrainedModel):
  """uint8 [B,S,S,3] -> class probabilities [B, num_classes] (jitted)."""

  @xla_options.jit
  def probabilities(params, images_u8):
    images = preprocess.eval_images(images_u8, trained.image_size)
    logits = trained.model.apply({'params': params}, images, train=False)
    return jax.nn.softmax(logits)

  return lambda images_u8: np.asarray(probabilities(trained.params,
                                                    images_u8))


def top_k(probabilities: np.ndarray, class_names: Sequence[str],
          k: int) -> list[list[tuple[str, float]]]:
  """Per image, the k most probable (name, probability), most probable first."""
  order = np.argsort(-probabilities, axis=-1, kind='stable')[:, :k]
  return [[(class_names[i], float(p[i])) for i in row]
          for row, p in zip(order, probabilities)]


def predict_files(trained: TrainedModel, paths: Sequence[str],
                  k: int = 5) -> list[list[tuple[str, float]]]:
  """Top-k (name, probability) for each image file."""
  images = np.stack([image_io.read_image(p, trained.image_size)
                     for p in paths])
  return top_k(make_predict_fn(trained)(images), trained.class_names, k)
