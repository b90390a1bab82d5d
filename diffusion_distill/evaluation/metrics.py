"""Offline sample-quality metrics for the digits quickstart.

FD-digits is the Fréchet distance between Gaussians fitted to the 64-d
features of the fixed digits classifier (digits_classifier.py) on samples
and on all 1,797 real digits. It is FID's recipe with another feature
network, so its values are NOT comparable to FID and must not be called FID.

Real digits against the same reference are not at 0: a finite sample's
covariance differs from the reference's, and FD-digits, like FID, is biased
upward for small N. Compare models at the same number of samples.
"""

from typing import Dict, Optional, Tuple

import numpy as np

from diffusion_distill.evaluation import digits_classifier
from diffusion_distill.evaluation import frechet


def _params_or_default(params):
  return params if params is not None else (
      digits_classifier.load_digits_classifier())


def digits_reference_stats(params=None,
                           images_uint8: Optional[np.ndarray] = None
                          ) -> frechet.RunningStats:
  """Feature statistics of the real digits (all 1,797 unless `images_uint8`)."""
  params = _params_or_default(params)
  if images_uint8 is None:
    images_uint8, _ = digits_classifier.load_digits()
  features, _ = digits_classifier.digits_features_and_logits(params,
                                                             images_uint8)
  return frechet.RunningStats.from_features(features)


def fd_digits(sample_images_uint8, reference_stats: frechet.RunningStats,
              params=None) -> float:
  """FD-digits of uint8 [N, 8, 8, 1] samples against `reference_stats`."""
  params = _params_or_default(params)
  features, _ = digits_classifier.digits_features_and_logits(
      params, sample_images_uint8)
  if features.shape[0] < 2:
    raise ValueError(f'fd_digits needs at least 2 samples; got '
                     f'{features.shape[0]}.')
  return frechet.RunningStats.from_features(features).frechet_distance(
      reference_stats)


def classifier_confidence_and_coverage(logits) -> Tuple[float, float]:
  """(confidence, coverage) of classifier logits [N, K], both in [0, 1].

  confidence: mean over samples of the largest softmax probability: how
    much each sample looks like some digit (the classifier was trained to
    give uniform predictions on noise, so noise scores about 1/K).
  coverage: how many of the K classes the samples cover, counting each
    sample by its confidence: with q_y the confidence-weighted fraction of
    samples classified as y (sum_y q_y = confidence),
      coverage = confidence * exp(entropy(q / confidence)) / K,
    i.e. the effective number of predicted classes as a fraction of K,
    scaled by how sure those predictions are. 1 for confidently classified,
    class-balanced samples (the real digits: ~0.99); 1/K when every sample
    gets the same label (mode collapse); ~1/K or less for noise, whose near-
    uniform predictions have arbitrary argmaxes that an unweighted class
    histogram would count as coverage. Unlike "classes predicted at least
    once", a class predicted for 1 sample in 1,000 adds almost nothing.
  """
  logits = np.asarray(logits, np.float64)
  if logits.ndim != 2 or logits.shape[0] == 0:
    raise ValueError(f'Need logits [N, K] with N > 0; got {logits.shape}.')
  return ClassStats(logits.shape[1]).update(logits).confidence_and_coverage()


class ClassStats:
  """Streams classifier logits into the sums that the class metrics need.

  Memory is O(K) whatever the number of samples: the Inception Score
  (a single split), confidence and coverage are all functions of these sums.
  """

  def __init__(self, num_classes: int):
    self.num_classes = num_classes
    self.count = 0
    self.sum_probs = np.zeros(num_classes)
    self.sum_neg_entropy = 0.  # sum over samples of sum_y p log p
    self.sum_max_prob = 0.
    self.confident_counts = np.zeros(num_classes)  # max prob, binned by argmax

  def update(self, logits) -> 'ClassStats':
    logits = np.asarray(logits, np.float64)
    log_p = logits - logits.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    self.count += p.shape[0]
    self.sum_probs += p.sum(axis=0)
    self.sum_neg_entropy += float(np.sum(p * log_p))
    max_probs = p.max(axis=1)
    self.sum_max_prob += float(max_probs.sum())
    self.confident_counts += np.bincount(
        p.argmax(axis=1), weights=max_probs, minlength=self.num_classes)
    return self

  def inception_score(self) -> float:
    """exp(E_x KL(p(y|x) || p(y))) over all samples seen (one split)."""
    marginal = self.sum_probs / self.count
    mean_kl = (self.sum_neg_entropy / self.count -
               float(np.sum(marginal * np.log(np.maximum(marginal, 1e-30)))))
    return float(np.exp(mean_kl))

  def confidence_and_coverage(self) -> Tuple[float, float]:
    confidence = self.sum_max_prob / self.count
    weighted = self.confident_counts / self.count
    freq = weighted[weighted > 0] / weighted.sum()
    effective_classes = np.exp(-np.sum(freq * np.log(freq)))
    return float(confidence), float(
        confidence * effective_classes / self.num_classes)


def digits_metrics(sample_images_uint8,
                   reference_stats: Optional[frechet.RunningStats] = None,
                   params=None) -> Dict[str, float]:
  """{'fd_digits', 'confidence', 'coverage'} of uint8 [N, 8, 8, 1] samples."""
  params = _params_or_default(params)
  if reference_stats is None:
    reference_stats = digits_reference_stats(params)
  features, logits = digits_classifier.digits_features_and_logits(
      params, sample_images_uint8)
  confidence, coverage = classifier_confidence_and_coverage(logits)
  fd = frechet.RunningStats.from_features(features).frechet_distance(
      reference_stats)
  return {'fd_digits': fd, 'confidence': confidence, 'coverage': coverage}
