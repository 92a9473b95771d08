"""vit_jax: Vision Transformers in JAX/Flax, compatible with the published checkpoints."""

import setuptools

setuptools.setup(
    name='vit_jax',
    version='0.1.0',
    description='Vision Transformer (ViT) training and fine-tuning in JAX/Flax.',
    packages=['vit_jax', 'vit_jax.configs'],
    python_requires='>=3.10',
    install_requires=[
        'jax>=0.5',
        'flax>=0.10',
        'optax>=0.2.4',
        'orbax-checkpoint>=0.11',
        'tensorflow-datasets==4.9.10',
        'tensorflow-cpu>=2.16',  # tf.data only; kept off accelerators.
        'importlib_resources',  # Imported by tfds 4.9.10 without declaring it.
        'ml-collections>=1.0',
        'chex>=0.1.89',
        'numpy>=1.26',
        'scipy',  # Position embeddings resized as the original does (ndimage.zoom).
        'einops',  # MLP-Mixer's token rearrangement.
        'absl-py',
        'etils[epath]',  # Remote paths (gs://) for checkpoints.
        'safetensors>=0.4',  # timm / transformers weights without torch.
        'huggingface_hub>=0.24',  # Weights from the Hugging Face Hub.
        'tensorboard',  # Its event-file writer: TensorBoard logs (metrics.py).
        'pillow',
        'matplotlib',  # Training curves, confusion matrices, attention maps.
        'tqdm',
    ],
    extras_require={
        'test': ['pytest>=8', 'pytest-xdist', 'nbclient', 'nbformat',
                 'ipykernel'],
        # Reference implementations for the logit-parity tests only. Pinned
        # as a pair: an older torch beside PyPI's newest torchvision breaks.
        'peers': ['torch==2.14.1', 'torchvision==0.29.1', 'timm',
                  'transformers'],
    },
)
