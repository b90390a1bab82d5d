"""Progressive distillation of diffusion models (Salimans & Ho, ICLR 2022) in JAX/Flax."""

from diffusion_distill.inference import Sampler
from diffusion_distill.layout import load_sampler

__all__ = ['load_sampler', 'Sampler']
