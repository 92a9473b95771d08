"""Writes CIFAR-10 from a tfds data dir as an image folder small enough to
carry to a GPU machine without a package index (no TensorFlow, no copy of the data).

  python benchmarks/make_gpu_cifar10.py ../shared/data/tensorflow_datasets .gpu_data/cifar10

JPEG quality 75 with 4:2:0 chroma: the shared copy was itself made from
quality-75 JPEGs, so re-encoding moves pixels by 0.16 levels on average
(measured) and the folder is ~53 MiB for all 60,000 images.
"""

import os
import sys

from PIL import Image
import tensorflow_datasets as tfds


def main(data_dir, out_dir):
  builder = tfds.builder('cifar10', data_dir=data_dir)
  names = builder.info.features['label'].names
  for split in ('train', 'test'):
    data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    for i, (image, label) in enumerate(zip(data['image'], data['label'])):
      folder = os.path.join(out_dir, split, names[label])
      os.makedirs(folder, exist_ok=True)
      Image.fromarray(image).save(os.path.join(folder, f'{i:05d}.jpg'),
                                  quality=75, subsampling=2)
    print(split, len(data['label']), 'images')


if __name__ == '__main__':
  main(*sys.argv[1:3])
