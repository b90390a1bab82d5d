"""Image grids and PNG files (PIL and etils.epath: local paths and gs://)."""

import io

from etils import epath
import numpy as np
from PIL import Image

# Grids smaller than this many pixels a side are enlarged for viewing.
MIN_GRID_SIDE = 256


def image_grid(images, ncols=None, pad=1):
  """Tiles uint8 [N, H, W, C] images into one image, with grey lines between."""
  n = images.shape[0]
  ncols = ncols or int(np.ceil(np.sqrt(n)))
  nrows = int(np.ceil(n / ncols))
  images = np.pad(images, ((0, nrows * ncols - n), (pad, pad), (pad, pad),
                           (0, 0)), constant_values=128)
  _, h, w, c = images.shape
  return images.reshape(nrows, ncols, h, w, c).swapaxes(1, 2).reshape(
      nrows * h, ncols * w, c)


def upscale(image, min_side=MIN_GRID_SIDE):
  """Nearest-neighbour enlargement of [H, W, C] by the smallest integer factor
  that makes both sides at least `min_side` pixels (none if they already are)."""
  factor = int(np.ceil(min_side / min(image.shape[:2])))
  if factor <= 1:
    return image
  return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def png_bytes(image):
  """PNG encoding of a uint8 [H, W, C] image (C = 1 or 3)."""
  image = np.asarray(image, np.uint8)
  if image.shape[-1] == 1:
    image = image[..., 0]
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='PNG')
  return buf.getvalue()


def save_png(path, image):
  """Writes a uint8 [H, W, C] image as PNG, creating its directory."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(png_bytes(image))
