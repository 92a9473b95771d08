"""Classify your own images with a trained model: top-k names and probabilities.

  python -m vit_jax.predict --checkpoint runs/scratch cat.jpg dog.png
  python -m vit_jax.predict --checkpoint ViT-B_16_cifar10.npz --labels names.txt x.jpg

`--checkpoint` is a workdir of `vit_jax.main` (model.npz + run.json: model,
image size and class names as trained) or a parameter file in any layout
`checkpoint.load` reads; for a bare file the architecture, number of classes
and image size are read off the arrays (`--model_name` checks them against
the size table). This module also holds the loading shared by evaluate.py and
visualize.py.
"""

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from vit_jax import checkpoint
from vit_jax import layout
from vit_jax import models
from vit_jax import preprocess

RUN_FILE = 'run.json'
MODEL_FILE = 'model.npz'


class ImageError(ValueError):
  """An image file that cannot be read: names the file and why."""


@dataclasses.dataclass(frozen=True)
class TrainedModel:
  """A classifier ready to run: module, parameters and what it was trained on."""
  model: models.VisionTransformer
  params: Any  # Linen tree of numpy arrays.
  image_size: int  # Side of the square images the model sees.
  class_names: tuple[str, ...]
  path: str  # The parameter file, for messages.
  run: dict  # run.json of the workdir ({} for a bare parameter file).

  @property
  def num_classes(self) -> int:
    return self.model.num_classes


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


def _inference_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
  """Training-only options off: float32, default attention, no remat."""
  return {**overrides, 'dtype': jnp.float32, 'attention_impl': 'auto',
          'remat': False}


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
    run = json.load(f)
  if model_name and model_name != run['model_name']:
    raise checkpoint.CheckpointError(
        f'--model_name={model_name} but {workdir} trained '
        f'{run["model_name"]}; leave --model_name out for a workdir.')
  model = models.get_model(run['model_name'], run['num_classes'],
                           **_inference_overrides(run.get('model', {})))
  params = checkpoint.load(params_path)
  _check_fits(model, params, run['image_size'], params_path)
  names = tuple(run.get('class_names') or default_names(run['num_classes']))
  return TrainedModel(model, params, run['image_size'], names, params_path,
                      run)


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
    model = models.VisionTransformer(
        models.ViTConfig(**_inference_overrides(found)), num_classes)
  _check_fits(model, params, image_size, path)
  return TrainedModel(model, params, image_size, default_names(num_classes),
                      path, {})


def _check_fits(model, params, image_size: int, path: str):
  """Raises CheckpointError naming every key or shape that does not fit."""
  expected = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, image_size, image_size, 3))))['params']
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


def read_image(path: str, size: int) -> np.ndarray:
  """uint8 [size, size, 3] from a JPEG/PNG/... of any size and mode."""
  try:
    with Image.open(path) as image:
      image = image.convert('RGB')
      if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
      return np.asarray(image, np.uint8)
  except FileNotFoundError:
    raise ImageError(f'{path}: no such file.') from None
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise ImageError(f'{path}: cannot read it as an image ({e}).') from None


def make_predict_fn(trained: TrainedModel):
  """uint8 [B,S,S,3] -> class probabilities [B, num_classes] (jitted)."""

  @jax.jit
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
  images = np.stack([read_image(p, trained.image_size) for p in paths])
  return top_k(make_predict_fn(trained)(images), trained.class_names, k)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m vit_jax.predict', description=__doc__.split('\n')[0])
  parser.add_argument('images', nargs='+', metavar='IMAGE',
                      help='image files (JPEG, PNG, ...; any size)')
  parser.add_argument('--checkpoint', required=True,
                      help='workdir of vit_jax.main, or a parameter file')
  parser.add_argument('--model_name', default=None,
                      help='for a bare file: check it is this size (ViT-B_16)')
  parser.add_argument('--labels', default=None,
                      help='file with one class name per line (overrides '
                           'the names saved with the run)')
  parser.add_argument('--top_k', type=int, default=5)
  parser.add_argument('--json', action='store_true',
                      help='print one JSON object per image instead')
  args = parser.parse_args(argv)
  try:
    trained = load_model(args.checkpoint, args.model_name, args.labels)
    results = predict_files(trained, args.images,
                            min(args.top_k, trained.num_classes))
  except (ImageError, checkpoint.CheckpointError, FileNotFoundError,
          ValueError) as e:
    print(f'Error: {e}', file=sys.stderr)
    return 1
  for path, result in zip(args.images, results):
    if args.json:
      print(json.dumps({'image': path, 'top_k': [
          {'class': name, 'probability': p} for name, p in result]}))
    else:
      print(path)
      for rank, (name, p) in enumerate(result, 1):
        print(f'  {rank}. {name:<20s} {p:.4f}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
