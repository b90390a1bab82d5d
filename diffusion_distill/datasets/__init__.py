"""TFDS builders for data sets bundled offline.

Importing this package registers them with TFDS (e.g. `tfds.builder('digits')`).
"""

from diffusion_distill.datasets import digits  # pylint: disable=unused-import
