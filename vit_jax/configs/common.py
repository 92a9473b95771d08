"""The base config: every key of every run, declared once, with a comment.

`get_config()` holds the original repository's keys with the original's
defaults, so its configs (`vit.py`, `augreg.py`, `mixer_base16_cifar10.py`)
and code that builds a config from it (its tests, its notebook) mean what
they meant there. This project's keys follow, each defaulting to the
original's behaviour. Experiment configs (here and in the repository's
top-level `configs/`) start from `get_config()`, set values, and stay
locked: a misspelt key (`--config.batchsize=8`) is refused.

`config.model` is a model config of `configs/models.py`; `config.pp` a
`pp_config()` (the original sets both later, and its code may assign a
partial `pp`: `resolve` fills in the rest before training).
"""

import copy
from typing import Any, Dict, Iterable, Optional, Tuple, Union

import ml_collections

_placeholder = ml_collections.config_dict.placeholder


class ConfigError(ValueError):
  """A config a run cannot use: names the key and how to set it."""


def get_config():
  """Returns config values other than model parameters (locked)."""
  config = ml_collections.ConfigDict()

  # The original's keys, with its defaults.
  config.pretrained_dir = '.'  # Folder (local, gs://, https) with <model_name>.npz; None: train from scratch.
  config.dataset = _placeholder(str)  # A tfds name, or a folder {train,test}/<class>/<file>.jpg|png.
  config.tfds_manual_dir = _placeholder(str)  # tfds's manual_dir (datasets that need a manual download).
  config.tfds_data_dir = _placeholder(str)  # Where tfds data lives (None: $TFDS_DATA_DIR or tfds's default).
  config.total_steps = _placeholder(int)  # Optimizer steps (with train_minutes: the most it may choose).
  config.grad_norm_clip = 1.0  # Global-norm gradient clipping (0: off).
  config.optim_dtype = 'bfloat16'  # dtype of the momentum state (SGD's, AdamW's first moment).
  config.accum_steps = 8  # Micro-batches per step (gradient accumulation to fit memory).
  config.batch = 512  # Global batch (all devices and hosts).
  config.batch_eval = 512  # Global evaluation batch.
  config.shuffle_buffer = 50_000  # tf.data shuffle buffer of get_data*; the trainer's (seed, step) order is a full shuffle.
  config.eval_every = 100  # Steps between evaluations (and at the end).
  config.progress_every = 10  # Steps between training metrics (metrics.jsonl) and progress lines.
  config.checkpoint_every = 1_000  # Steps between checkpoints (and at the end; 0: only at the end).
  config.prefetch = 2  # Batches input_pipeline.prefetch puts on the devices ahead.
  config.base_lr = 0.03  # Peak learning rate.
  config.decay_type = 'cosine'  # 'cosine' or 'linear' decay after warm-up.
  config.warmup_steps = 500  # Linear warm-up steps.
  config.trainer = 'train'  # What main runs: 'train' (the original's 'inference_time': vit_jax.benchmark).
  config.model = None  # A model config (configs/models.py); set by the experiment config.
  config.model_or_filename = _placeholder(str)  # augreg.py: an AugReg name (best i21k file from index.csv) or file name.
  config.pp = None  # A pp_config(): splits and image sizes; set by with_dataset or the experiment.
  # (Keys that are None until set are typed placeholders, so that the
  # command line can set them: --config.tfds_data_dir=DIR.)

  # This project's keys.
  config.model_type = 'ViT'  # 'ViT' or 'Mixer' (the original's Mixer config sets it).
  config.tfds_download = True  # Download and prepare a missing tfds dataset on first use (False: stop with a message).
  config.data_on_device = True  # Hold the data in accelerator memory; gather and augment there.
  config.reuse_host_memory = True  # CPU backend: steps run on the main thread, malloc reuses their memory (host_memory.py).
  config.aug = aug_config()  # On-device augmentation (augment.py).
  config.train_minutes = 0.0  # Wall-clock budget of the whole command; sizes total_steps from the step rate measured here (0: off).
  config.optimizer = 'sgd'  # 'sgd' (with momentum), 'adamw', or 'muon' (encoder kernels; undecayed Adam for the rest).
  config.momentum = 0.9  # SGD momentum / Adam b1.
  config.b2 = 0.999  # Adam b2.
  config.weight_decay = 0.0  # Decoupled weight decay (AdamW, Muon); skips biases, norms, cls, pos_embedding.
  config.freeze_steps = 0  # First steps train only head (and pre_logits); backbone frozen.
  config.ema_decay = 0.0  # Exponential moving average of weights for evaluation (0: off).
  config.eval_count = 0  # > 0: that many evaluations and checkpoints, evenly over total_steps (overrides eval_every, checkpoint_every).
  config.keep_checkpoints = 2  # Checkpoints kept in the workdir.
  config.preemption_grace_seconds = 30.0  # Seconds a scheduler allows between SIGTERM and kill; a save estimated to take longer is warned about at start (0: no check).
  config.lock_stale_minutes = 30  # A workdir lock from another host with no heartbeat (progress line) this long is taken over.
  config.cpu_preset = ''  # This recipe's preset for CPUs (e.g. configs/cifar10_scratch.py:cpu), named when the recipe itself would train for hours on a CPU.
  config.seed = 0  # Seeds initialisation, data order, augmentation and dropout.

  return config.lock()


def pp_config(train: str = 'train', test: str = 'test',
              crop: Optional[int] = None) -> ml_collections.ConfigDict:
  """Splits and image sizes: the original's three keys, then ours."""
  pp = ml_collections.ConfigDict()
  pp.train = train  # Training split (tfds slicing syntax; image folders too).
  pp.test = test  # Evaluation split; every example is seen once.
  pp.crop = crop  # Side of the images the model sees.
  pp.resize = _placeholder(int)  # Side before the random crop (None: crop * 8/7; equal to crop: no resize).
  pp.source_size = _placeholder(int)  # Side images are resized to at load time (None: native size).
  return pp


def aug_config() -> ml_collections.ConfigDict:
  """On-device augmentation settings (augment.py, preprocess.py)."""
  aug = ml_collections.ConfigDict()
  aug.flip = True  # Random horizontal flips.
  aug.crop_padding = 0  # Pad-and-crop jitter in pixels (used when no resize happens).
  aug.randaugment_ops = 0  # RandAugment ops per image (0: off).
  aug.randaugment_magnitude = 9  # RandAugment magnitude (0..10; higher is clipped to 10).
  aug.mixup_alpha = 0.0  # Beta(alpha, alpha) mixup (0: off).
  aug.cutmix_alpha = 0.0  # Beta(alpha, alpha) cutmix (0: off).
  aug.label_smoothing = 0.0  # Mass spread uniformly over all classes.
  return aug


# We leave out a subset of training for validation purposes (if needed).
DATASET_PRESETS = {
    'cifar10': ml_collections.ConfigDict(
        {'total_steps': 10_000, 'pp': pp_config('train[:98%]', 'test', 384)}),
    'cifar100': ml_collections.ConfigDict(
        {'total_steps': 10_000, 'pp': pp_config('train[:98%]', 'test', 384)}),
    'imagenet2012': ml_collections.ConfigDict(
        {'total_steps': 20_000,
         'pp': pp_config('train[:99%]', 'validation', 384)}),
}


def with_dataset(config: ml_collections.ConfigDict,
                 dataset: str) -> ml_collections.ConfigDict:
  """`config` (an unlocked copy) with `dataset` and its preset steps and
  splits. (Copied with its typed placeholders: the command line can still
  set them.)"""
  config = copy.deepcopy(config)
  config.unlock()
  config.dataset = dataset
  config.update(DATASET_PRESETS[dataset])
  return config


def flatten(
    config: Union[ml_collections.ConfigDict, Dict[str, Any]],
    prefix: Tuple[str, ...] = ('config',)
) -> Iterable[Tuple[str, Any]]:
  """Returns a flat representation of `config`, e.g. for use in sweeps."""
  for k, v in config.items():
    if isinstance(v, (dict, ml_collections.ConfigDict)):
      yield from flatten(v, prefix + (k,))
    else:
      yield ('.'.join(prefix + (k,)), v)


def resolve(config) -> ml_collections.ConfigDict:
  """The config a run uses: a locked copy with what the original's code may
  leave out filled in.

  Code written for the original assigns a partial `pp` (only `crop` for an
  image folder) and never sets this project's sub-keys; they get their
  defaults here, in one place. Missing required values are an error that
  names the key.
  """
  resolved = config.copy_and_resolve_references()
  with resolved.unlocked():
    pp = pp_config().lock()  # A misspelt pp key is refused.
    pp.update(dict(resolved.pp or {}))
    resolved.pp = pp
  for key in ('dataset', 'model', 'total_steps'):
    if resolved[key] in (None, ''):
      raise ConfigError(f'config.{key} is not set; set it in the config or '
                       f'with --config.{key}=... (see vit_jax/configs).')
  if resolved.pp.crop is None:
    raise ConfigError('config.pp.crop (the image side the model sees) is not '
                      'set.')
  return resolved.lock()
