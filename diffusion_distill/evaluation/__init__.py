"""Sample-quality metrics: Fréchet distances, Inception (FID/IS), FD-digits.

The Inception network is imported lazily by its users (it needs converted
weights, see inception.py); the rest is light.
"""

from diffusion_distill.evaluation.frechet import frechet_distance
from diffusion_distill.evaluation.frechet import RunningStats
from diffusion_distill.evaluation.metrics import classifier_confidence_and_coverage
from diffusion_distill.evaluation.metrics import digits_metrics
from diffusion_distill.evaluation.metrics import digits_reference_stats
from diffusion_distill.evaluation.metrics import fd_digits

__all__ = [
    'classifier_confidence_and_coverage',
    'digits_metrics',
    'digits_reference_stats',
    'fd_digits',
    'frechet_distance',
    'RunningStats',
]
