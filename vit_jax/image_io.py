"""Reading one image file: the single decoder behind datasets and predict.

Image folders (input_pipeline) and the files given to predict/visualize are
decoded the same way, so a model sees the same pixels for the same file
whichever way it reaches it.
"""

from typing import Optional

import numpy as np
from PIL import Image


class ImageError(ValueError):
  """An image file that cannot be read: names the file and why."""


def read_image(path: str, size: Optional[int] = None) -> np.ndarray:
  """uint8 [H, W, 3] from a JPEG/PNG/... of any mode; [size, size, 3] if
  `size` is given. PIL's bilinear filter widens when shrinking (antialias)."""
  try:
    with Image.open(path) as image:
      image = image.convert('RGB')
      if size and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
      return np.asarray(image, np.uint8)
  except FileNotFoundError:
    raise ImageError(f'{path}: no such file.') from None
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise ImageError(f'{path}: cannot read it as an image ({e}).') from None
