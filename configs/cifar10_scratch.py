"""Train a plain ViT (patch 4 on 32x32) from scratch on CIFAR-10.

  python -m vit_jax.main --config configs/cifar10_scratch.py --workdir runs/scratch      # GPU recipe
  python -m vit_jax.main --config configs/cifar10_scratch.py:cpu --workdir runs/cpu      # 2 CPU cores, 15 min
  python -m vit_jax.main --config configs/cifar10_scratch.py:cpu,model=testing ...       # another model

Everything happens on device: the uint8 dataset is held in accelerator memory,
batches are gathered by index, and crop/flip, RandAugment and mixup/cutmix run
in JAX inside the jitted step. gpu: AdamW (no decay on biases, norms, cls and
position embeddings); cpu: Muon on the encoder's kernels, Adam without decay on
the rest. Warm-up + cosine, label smoothing, stochastic depth (gpu).
The :cpu preset has a time budget, not a step count: `train_minutes=15`
chooses total_steps (at most 20,000) from the step and evaluation times
measured on this machine after compiling, so the whole command, data loading
included, ends within 15 minutes; 4 evaluations and checkpoints spread over
the chosen steps (`eval_count`). The choice is stored in the workdir
(budget.json) and kept when the run resumes. For a fixed length instead:
--config.train_minutes=0 --config.total_steps=N --config.eval_count=0.
`model=NAME` trains another model of configs/models.py (its own
architecture) with the preset's recipe.
Measured results (accuracy on the full 10,000-image test split; commands,
curves and the ablation in BENCHMARKS.md):
  :cpu  76.4% test accuracy in 12.9 minutes (whole command; 4,746 steps
        chosen by the budget) on a 2-core Zen 3 EPYC (2026-11-29); at 5,000
        steps 76.6% in 12.2 minutes on a 2-core Zen 4 EPYC.
  gpu   not yet validated: one 3-minute H100 run (69 epochs) stalled at 47.4%;
        benchmarks/gpu_scratch_ablation.sh is ready to find out why.
"""

from vit_jax.configs import common
from vit_jax.configs import models

# The presets' own architectures (each a size of configs/models.py with
# overrides). Chosen for the cpu preset by equal-images proxies on 2 CPU
# cores (BENCHMARKS.md): patch 4, width 96, depth 4 learned fastest per
# second among the sizes tried.
_ARCHITECTURES = {
    'gpu': ('ViT-S_4', dict(num_layers=9)),
    'cpu': ('ViT-Ti_4', dict(hidden_size=96, mlp_dim=192, num_heads=3,
                             num_layers=4)),
}


def _parse(arg):
  """'cpu' or 'cpu,model=testing' -> (preset, model name or None)."""
  preset, model_name = 'gpu', None
  for token in filter(None, (arg or '').split(',')):
    key, _, value = token.rpartition('=')
    if key == 'model':
      model_name = value
    elif not key and value in _ARCHITECTURES:
      preset = value
    else:
      raise ValueError(f'Unknown config argument {token!r}; use gpu|cpu and '
                       'model=NAME.')
  return preset, model_name


def _model(preset: str, model_name, **options):
  """The preset's architecture, or `model_name`'s, with `options`."""
  if model_name is None:
    model_name, architecture = _ARCHITECTURES[preset]
    options = {**architecture, **options}
  return models.model_config(model_name, classifier='gap', dropout_rate=0.0,
                             **options)


def get_config(arg=None):
  """arg: None/'gpu' (full recipe) or 'cpu' (2 CPU cores, 15 minutes),
  optionally with model=NAME."""
  preset, model_name = _parse(arg)
  config = common.get_config()
  config.dataset = 'cifar10'
  config.pretrained_dir = None
  config.pp = common.pp_config('train', 'test', 32)
  config.pp.resize = 32
  config.aug.crop_padding = 4
  config.optimizer = 'adamw'
  config.optim_dtype = 'float32'
  config.accum_steps = 1
  config.eval_every = 1_000
  config.progress_every = 100
  if preset == 'gpu':
    config.model = _model(preset, model_name, stochastic_depth=0.1,
                          dtype='bfloat16')
    config.aug.randaugment_ops = 2
    config.aug.mixup_alpha = 0.8
    config.aug.cutmix_alpha = 1.0
    config.aug.label_smoothing = 0.1
    config.batch = 1024
    config.total_steps = 9_800  # 200 epochs.
    config.base_lr = 2e-3
    config.weight_decay = 0.05
    config.checkpoint_every = 2_000
    config.cpu_preset = 'configs/cifar10_scratch.py:cpu'
  else:
    # Training on a random half of the 64 patch tokens (patch_dropout) runs
    # ~1.9x the images per second (62.5% in 14 minutes with AdamW, against
    # 60.0% for all tokens). Muon on the encoder kernels gained ~10 points
    # over AdamW on an equal image budget, best at lr 8e-3 (76.6%).
    config.model = _model(preset, model_name, patch_dropout=0.5)
    config.optimizer = 'muon'
    config.aug.label_smoothing = 0.1
    config.batch = 128
    config.batch_eval = 1000
    # The step count is whatever fits 15 minutes of this machine (about
    # 5,300 steps at ~950 img/s, 3,100 at ~550 img/s); at most 20,000.
    config.train_minutes = 15.0
    config.total_steps = 20_000
    config.warmup_steps = 200
    config.base_lr = 8e-3
    config.weight_decay = 0.05
    config.eval_count = 4
  return config
