"""The base config: every key of every experiment, declared once.

Experiment configs (cifar10_finetune.py, cifar10_scratch.py) start from
`get_config()`, change values and lock the result, so a misspelt key on the
command line (`--config.batchsize=8`) is refused instead of ignored.
"""

import ml_collections


def get_config():
  """Defaults: fine-tuning ViT-B_16 on CIFAR-10 as in the original repo."""
  config = ml_collections.ConfigDict()

  # Data.
  config.dataset = 'cifar10'  # tfds name, or a folder {train,test}/<class>/*.jpg.
  config.tfds_data_dir = ml_collections.config_dict.placeholder(str)  # None: $TFDS_DATA_DIR or tfds default.
  config.tfds_download = True  # Download and prepare a missing tfds dataset on first use (False: stop with a message).
  config.pp = ml_collections.ConfigDict()
  config.pp.train = 'train[:98%]'  # Training split (tfds slicing syntax).
  config.pp.test = 'test'  # Evaluation split; every example is seen once.
  config.pp.source_size = ml_collections.config_dict.placeholder(int)  # Side images are resized to at load time (None: native).
  config.pp.resize = ml_collections.config_dict.placeholder(int)  # Side before the random crop (None: crop * 8/7; equal to crop: no resize).
  config.pp.crop = 224  # Side of the images the model sees.
  config.data_on_device = True  # Hold the data in accelerator memory; gather and augment there.
  config.reuse_host_memory = True  # CPU backend: steps run on the main thread, malloc reuses their memory (vit_jax/host_memory.py).

  # Augmentation (on device, in JAX).
  config.aug = ml_collections.ConfigDict()
  config.aug.flip = True  # Random horizontal flips.
  config.aug.crop_padding = 0  # Pad-and-crop jitter in pixels (used when no resize happens).
  config.aug.randaugment_ops = 0  # RandAugment ops per image (0: off).
  config.aug.randaugment_magnitude = 9  # RandAugment magnitude (0..10; higher is clipped to 10).
  config.aug.mixup_alpha = 0.0  # Beta(alpha, alpha) mixup (0: off).
  config.aug.cutmix_alpha = 0.0  # Beta(alpha, alpha) cutmix (0: off).
  config.aug.label_smoothing = 0.0  # Mass spread uniformly over all classes.

  # Model.
  config.model_name = 'ViT-B_16'  # A models.MODEL_SIZES name, e.g. ViT-B_16, ViT-Ti_4, testing.
  config.model = ml_collections.ConfigDict()  # Overrides of the size table (None: table value).
  config.model.hidden_size = ml_collections.config_dict.placeholder(int)  # Width.
  config.model.mlp_dim = ml_collections.config_dict.placeholder(int)  # MLP hidden width.
  config.model.num_heads = ml_collections.config_dict.placeholder(int)  # Attention heads.
  config.model.num_layers = ml_collections.config_dict.placeholder(int)  # Depth.
  config.model.patch_size = ml_collections.config_dict.placeholder(int)  # Patch side in pixels.
  config.model.classifier = 'token'  # 'token' (class token) or 'gap' (mean pooling).
  config.model.representation_size = ml_collections.config_dict.placeholder(int)  # pre_logits width (None: no pre_logits).
  config.model.dropout_rate = 0.0  # Dropout after attention/MLP.
  config.model.attention_dropout_rate = 0.0  # Dropout on attention weights.
  config.model.stochastic_depth = 0.0  # Drop-path rate of the last block (linear in depth).
  config.model.patch_dropout = 0.0  # Training only: fraction of patch tokens each image drops (PatchDropout; 0: off).
  config.model.dtype = 'float32'  # Compute dtype: float32 or bfloat16 (params stay float32).
  config.model.attention_impl = 'auto'  # auto, xla, cudnn or explicit.
  config.model.remat = False  # Recompute activations in the backward pass (saves memory).
  config.model.fp8 = False  # FP8 q/k/v, out and MLP matmuls (vit_jax/fp8.py): faster on NVIDIA compute capability >= 8.9, emulated elsewhere.
  config.pretrained_dir = 'checkpoints'  # Folder (local, gs://, https) with <model_name>.npz; None: from scratch.

  # Optimisation.
  config.total_steps = 10_000  # Optimizer steps (with train_minutes: the most it may choose).
  config.train_minutes = 0.0  # Wall-clock budget of the whole command; sizes total_steps from the step rate measured here (0: off).
  config.batch = 512  # Global batch (all devices and hosts).
  config.cpu_preset = ''  # This recipe's preset for CPUs (e.g. configs/cifar10_scratch.py:cpu), named when the recipe itself would train for hours on a CPU.
  config.batch_eval = 512  # Global evaluation batch.
  config.accum_steps = 1  # Micro-batches per step (gradient accumulation to fit memory).
  config.optimizer = 'sgd'  # 'sgd' (with momentum), 'adamw', or 'muon' (encoder kernels; undecayed Adam for the rest).
  config.base_lr = 0.03  # Peak learning rate.
  config.momentum = 0.9  # SGD momentum / Adam b1.
  config.b2 = 0.999  # Adam b2.
  config.weight_decay = 0.0  # Decoupled weight decay (AdamW); skips biases, norms, cls, pos_embedding.
  config.warmup_steps = 500  # Linear warm-up steps.
  config.decay_type = 'cosine'  # 'cosine' or 'linear' decay to zero after warm-up.
  config.grad_norm_clip = 1.0  # Global-norm gradient clipping (0: off).
  config.freeze_steps = 0  # First steps train only head (and pre_logits); backbone frozen.
  config.ema_decay = 0.0  # Exponential moving average of weights for evaluation (0: off).

  # Loop, logging and checkpoints.
  config.eval_every = 1000  # Steps between evaluations (and at the end).
  config.progress_every = 100  # Steps between training metrics (metrics.jsonl) and, in a log file, progress lines.
  config.checkpoint_every = 1000  # Steps between checkpoints (and at the end).
  config.eval_count = 0  # > 0: that many evaluations and checkpoints, evenly over total_steps (overrides eval_every, checkpoint_every).
  config.keep_checkpoints = 2  # Checkpoints kept in workdir/checkpoints.
  config.preemption_grace_seconds = 30.0  # Seconds a scheduler allows between SIGTERM and kill; a save estimated to take longer is warned about at start (0: no check).
  config.lock_stale_minutes = 30  # A workdir lock from another host with no heartbeat (progress line) this long is taken over.
  config.seed = 0  # Seeds initialisation, data order, augmentation and dropout.

  return config


def finalize(config):
  """Locks the config: unknown keys are refused from here on."""
  config.lock()
  return config
