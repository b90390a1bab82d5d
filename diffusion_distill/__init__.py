"""Progressive distillation of diffusion models (Salimans & Ho, ICLR 2022) in JAX/Flax."""

from diffusion_distill.inference import load_sampler
from diffusion_distill.inference import Sampler

__all__ = ['load_sampler', 'Sampler']
