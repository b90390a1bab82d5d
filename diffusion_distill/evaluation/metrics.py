"""Sample-quality metrics that the evaluation stage streams samples through.

FD-digits (the digits quickstart) is the Fréchet distance between Gaussians
fitted to the 64-d features of the fixed digits classifier
(digits_classifier.py) on samples and on all 1,797 real digits. It is FID's
recipe with another feature network, so its values are NOT comparable to FID
and must not be called FID. Other data sets use FID and the Inception Score
of the FID Inception-v3 (inception.py).

Real digits against the same reference are not at 0: a finite sample's
covariance differs from the reference's, and FD-digits, like FID, is biased
upward for small N. Compare models at the same number of samples.

A metric streams: `measure` feeds batches of uint8 images through it into
running sums (frechet.RunningStats, ClassStats), merged over processes, so
memory does not depend on the number of samples.
"""

from typing import Tuple

import flax.jax_utils
import jax
from jax.experimental import multihost_utils
import numpy as np

from diffusion_distill.evaluation import digits_classifier
from diffusion_distill.evaluation import frechet
from diffusion_distill.evaluation import inception


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
    # Samples drawn for a requested label, and how many the classifier
    # assigns to it.
    self.labelled = 0
    self.correct = 0

  def update(self, logits, labels=None) -> 'ClassStats':
    logits = np.asarray(logits, np.float64)
    if labels is not None:
      self.labelled += len(labels)
      self.correct += int(np.sum(np.argmax(logits, 1) == np.asarray(labels)))
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

  def label_accuracy(self) -> float:
    """The share of samples the classifier assigns to their requested label."""
    return self.correct / self.labelled

  def inception_score(self) -> float:
    """exp(E_x KL(p(y|x) || p(y))) over all samples seen (one split)."""
    marginal = self.sum_probs / self.count
    mean_kl = (self.sum_neg_entropy / self.count -
               float(np.sum(marginal * np.log(np.maximum(marginal, 1e-30)))))
    return float(np.exp(mean_kl))

  def confidence_and_coverage(self) -> Tuple[float, float]:
    """(confidence, coverage) of the logits seen, both in [0, 1].

    confidence: mean over samples of the largest softmax probability: how
      much each sample looks like some class (the digits classifier was
      trained to give uniform predictions on noise, so noise scores about
      1/K).
    coverage: how many of the K classes the samples cover, counting each
      sample by its confidence: with q_y the confidence-weighted fraction of
      samples classified as y (sum_y q_y = confidence),
        coverage = confidence * exp(entropy(q / confidence)) / K,
      i.e. the effective number of predicted classes as a fraction of K,
      scaled by how sure those predictions are. 1 for confidently
      classified, class-balanced samples (the real digits: ~0.99); 1/K when
      every sample gets the same label (mode collapse); ~1/K or less for
      noise, whose near-uniform predictions have arbitrary argmaxes that an
      unweighted class histogram would count as coverage.
    """
    confidence = self.sum_max_prob / self.count
    weighted = self.confident_counts / self.count
    freq = weighted[weighted > 0] / weighted.sum()
    effective_classes = np.exp(-np.sum(freq * np.log(freq)))
    return float(confidence), float(
        confidence * effective_classes / self.num_classes)


class DigitsMetric:
  """FD-digits, confidence and coverage from the fixed digits classifier."""
  name = 'fd_digits'
  num_classes = 10
  labels_match = True  # Its classes are the digits data set's.

  def __init__(self, params=None):
    self._params = (params if params is not None else
                    digits_classifier.load_digits_classifier())

  def features_and_logits(self, images):
    return digits_classifier.digits_features_and_logits(self._params, images)

  def summarize(self, stats, class_stats, reference):
    confidence, coverage = class_stats.confidence_and_coverage()
    out = {'fd_digits': stats.frechet_distance(reference),
           'confidence': confidence, 'coverage': coverage}
    if class_stats.labelled:
      out['label_accuracy'] = class_stats.label_accuracy()
    return out


class InceptionMetric:
  """FID and Inception Score from the FID Inception-v3 network."""
  name = 'fid'
  num_classes = 1008
  labels_match = False

  def __init__(self, weights_path):
    params = inception.load_inception_params(weights_path or None)
    self._devices = jax.local_devices()
    self._params = flax.jax_utils.replicate(params, self._devices)
    self._apply = jax.pmap(inception.apply_inception)

  def features_and_logits(self, images):
    """The network pmapped over the local devices (the batch is padded)."""
    n, d = images.shape[0], len(self._devices)
    pad = -n % d
    images = np.concatenate([images, np.repeat(images[:1], pad, 0)])
    features, logits = self._apply(
        self._params, images.reshape((d, -1) + images.shape[1:]))
    features = np.asarray(features).reshape((n + pad, -1))[:n]
    logits = np.asarray(logits).reshape((n + pad, -1))[:n]
    return features, logits

  def summarize(self, stats, class_stats, reference):
    return {'fid': stats.frechet_distance(reference),
            'inception_score': class_stats.inception_score()}


def make_metric(dataset_name, inception_weights=''):
  """The data set's metric; raises FileNotFoundError (one line) without
  Inception weights."""
  if dataset_name == 'digits':
    return DigitsMetric()
  return InceptionMetric(inception_weights)


def _allreduce(stats, class_stats):
  """Merges every process's sums, so each process sees all samples' stats."""
  if jax.process_count() == 1:
    return stats, class_stats
  gathered = multihost_utils.process_allgather(
      {'count': np.int64(stats.count), 'shift': stats.shift, 'sum': stats.sum,
       'sum_outer': stats.sum_outer, 'c_count': np.int64(class_stats.count),
       'sum_probs': class_stats.sum_probs,
       'neg_ent': np.float64(class_stats.sum_neg_entropy),
       'max_prob': np.float64(class_stats.sum_max_prob),
       'confident': class_stats.confident_counts,
       'labelled': np.int64(class_stats.labelled),
       'correct': np.int64(class_stats.correct)})
  merged = frechet.RunningStats(stats.dim)
  merged_class = ClassStats(class_stats.num_classes)
  for p in range(jax.process_count()):
    part = frechet.RunningStats(stats.dim)
    part.count, part.shift = int(gathered['count'][p]), gathered['shift'][p]
    part.sum, part.sum_outer = gathered['sum'][p], gathered['sum_outer'][p]
    merged.merge(part)
    merged_class.count += int(gathered['c_count'][p])
    merged_class.sum_probs += gathered['sum_probs'][p]
    merged_class.sum_neg_entropy += float(gathered['neg_ent'][p])
    merged_class.sum_max_prob += float(gathered['max_prob'][p])
    merged_class.confident_counts += gathered['confident'][p]
    merged_class.labelled += int(gathered['labelled'][p])
    merged_class.correct += int(gathered['correct'][p])
  return merged, merged_class


def measure(metric, batches):
  """(feature RunningStats, ClassStats) of batches of uint8 images, or of
  (images, requested labels or None), over all processes."""
  stats, class_stats = None, ClassStats(metric.num_classes)
  for batch in batches:
    images, labels = batch if isinstance(batch, tuple) else (batch, None)
    features, logits = metric.features_and_logits(images)
    if stats is None:
      stats = frechet.RunningStats(features.shape[1])
    stats.update(features)
    # Inception's classes are not the data set's: no label accuracy there.
    class_stats.update(logits, labels if metric.labels_match else None)
  return _allreduce(stats, class_stats)
