"""Train a plain ViT (patch 4 on 32x32) from scratch on CIFAR-10.

  python -m vit_jax.main --config configs/cifar10_scratch.py --workdir runs/scratch      # GPU recipe
  python -m vit_jax.main --config configs/cifar10_scratch.py:cpu --workdir runs/cpu      # 2 CPU cores, 15 min

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
Measured results (accuracy on the full 10,000-image test split; commands,
curves and the ablation in BENCHMARKS.md):
  :cpu  76.4% test accuracy in 12.9 minutes (whole command; 4,746 steps
        chosen by the budget) on a 2-core Zen 3 EPYC (2026-11-29); at 5,000
        steps 76.6% in 12.2 minutes on a 2-core Zen 4 EPYC.
  gpu   not yet validated: one 3-minute H100 run (69 epochs) stalled at 47.4%;
        benchmarks/gpu_scratch_ablation.sh is ready to find out why.
"""

from configs import common


def get_config(arg=None):
  """arg: None/'gpu' (full recipe) or 'cpu' (2 CPU cores, 15 minutes)."""
  preset = arg or 'gpu'
  if preset not in ('gpu', 'cpu'):
    raise ValueError(f'Unknown preset {arg!r}; use "gpu" or "cpu".')
  config = common.get_config()
  config.pretrained_dir = None
  config.pp.train = 'train'
  config.pp.crop = 32
  config.pp.resize = 32
  config.aug.crop_padding = 4
  config.optimizer = 'adamw'
  config.model.classifier = 'gap'
  if preset == 'gpu':
    config.model_name = 'ViT-S_4'
    config.model.num_layers = 9
    config.model.stochastic_depth = 0.1
    config.model.dtype = 'bfloat16'
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
    # Chosen by equal-images proxies on 2 CPU cores (BENCHMARKS.md): patch 4,
    # width 96, depth 4 learned fastest per second among the sizes tried.
    # Training on a random half of the 64 patch tokens (patch_dropout) runs
    # ~1.9x the images per second (62.5% in 14 minutes with AdamW, against
    # 60.0% for all tokens). Muon on the encoder kernels gained ~10 points
    # over AdamW on an equal image budget, best at lr 8e-3 (76.6%).
    config.model_name = 'ViT-Ti_4'
    config.model.hidden_size = 96
    config.model.mlp_dim = 192
    config.model.num_heads = 3
    config.model.num_layers = 4
    config.model.patch_dropout = 0.5
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
  return common.finalize(config)
