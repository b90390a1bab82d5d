"""Fréchet distance between Gaussians fitted to features, and streamed statistics.

Pure NumPy in float64: feature extraction runs on the accelerators, the
statistics of a few 10k feature vectors do not need them, and float32 loses
the trace term of the distance to round-off (the three traces are large and
nearly cancel for good samples).
"""

import os
from typing import Union

import numpy as np

PathLike = Union[str, os.PathLike]


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  """Symmetric square root of a (numerically) positive semi-definite matrix."""
  eigvals, eigvecs = np.linalg.eigh(matrix)
  # Round-off makes the zero eigenvalues of rank-deficient covariances (fewer
  # samples than dimensions, dead features) slightly negative.
  eigvals = np.clip(eigvals, 0.0, None)
  return (eigvecs * np.sqrt(eigvals)) @ eigvecs.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
  """Fréchet (2-Wasserstein) distance^2 between N(mu1, cov1) and N(mu2, cov2).

  d^2 = |mu1 - mu2|^2 + tr(cov1) + tr(cov2) - 2 tr((cov1 cov2)^{1/2}).

  tr((cov1 cov2)^{1/2}) is computed as the sum of square roots of the
  eigenvalues of the symmetric matrix S cov2 S, S = cov1^{1/2}: it has the
  same spectrum as cov1 cov2, but a symmetric eigensolver never returns the
  complex parts that a general sqrtm of cov1 cov2 produces for nearly
  singular covariances, and tiny negative eigenvalues from round-off are
  clipped to zero.

  Returns:
    The distance as a Python float (>= 0 up to round-off).
  """
  mu1 = np.asarray(mu1, np.float64)
  mu2 = np.asarray(mu2, np.float64)
  cov1 = np.asarray(cov1, np.float64)
  cov2 = np.asarray(cov2, np.float64)
  dim = mu1.shape[0]
  if (mu1.shape != (dim,) or mu2.shape != (dim,) or
      cov1.shape != (dim, dim) or cov2.shape != (dim, dim)):
    raise ValueError(
        f'frechet_distance needs means of shape (D,) and covariances of '
        f'shape (D, D) with one D; got {mu1.shape}, {cov1.shape}, '
        f'{mu2.shape}, {cov2.shape}.')
  # Accumulated covariances are symmetric only up to round-off; eigh reads
  # one triangle, so make both agree first.
  cov1 = 0.5 * (cov1 + cov1.T)
  cov2 = 0.5 * (cov2 + cov2.T)
  sqrt_cov1 = _psd_sqrt(cov1)
  middle = sqrt_cov1 @ cov2 @ sqrt_cov1
  middle = 0.5 * (middle + middle.T)
  eigvals = np.clip(np.linalg.eigvalsh(middle), 0.0, None)
  trace_sqrt = np.sum(np.sqrt(eigvals))
  diff = mu1 - mu2
  distance = diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt
  return float(distance)


class RunningStats:
  """Mean and covariance of a stream of feature vectors in O(D^2) memory.

  Sums are taken around a fixed shift (the mean of the first batch), in
  float64: the plain sum of outer products loses the covariance to
  cancellation when features have a large mean relative to their spread,
  while shifted sums keep the same single-pass, mergeable form.
  """

  def __init__(self, dim: int):
    self.dim = int(dim)
    self.count = 0
    self.shift = np.zeros((self.dim,), np.float64)
    self.sum = np.zeros((self.dim,), np.float64)
    self.sum_outer = np.zeros((self.dim, self.dim), np.float64)

  def update(self, features) -> 'RunningStats':
    """Adds a batch of feature vectors [B, D]; returns self."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[1] != self.dim:
      raise ValueError(f'RunningStats({self.dim}) needs features of shape '
                       f'[B, {self.dim}]; got {features.shape}.')
    if features.shape[0] == 0:
      return self
    if self.count == 0:
      self.shift = features.mean(axis=0)
    centered = features - self.shift
    self.count += features.shape[0]
    self.sum += centered.sum(axis=0)
    self.sum_outer += centered.T @ centered
    return self

  def merge(self, other: 'RunningStats') -> 'RunningStats':
    """Adds the vectors `other` has seen (e.g. another host's); returns self."""
    if other.dim != self.dim:
      raise ValueError(f'Cannot merge RunningStats of dimension {other.dim} '
                       f'into one of dimension {self.dim}.')
    if other.count == 0:
      return self
    if self.count == 0:
      self.shift = other.shift.copy()
    # Re-express other's sums around our shift: x - a = (x - b) + (b - a).
    delta = other.shift - self.shift
    other_sum = other.sum + other.count * delta
    self.sum_outer += (other.sum_outer + np.outer(other.sum, delta) +
                       np.outer(delta, other.sum) +
                       other.count * np.outer(delta, delta))
    self.sum += other_sum
    self.count += other.count
    return self

  def mean(self) -> np.ndarray:
    if self.count == 0:
      raise ValueError('RunningStats.mean() of no features.')
    return self.shift + self.sum / self.count

  def cov(self) -> np.ndarray:
    """Unbiased (N - 1) covariance, like np.cov(features, rowvar=False)."""
    if self.count < 2:
      raise ValueError(f'RunningStats.cov() needs at least 2 features; has '
                       f'{self.count}.')
    centered_mean = self.sum / self.count
    cov = (self.sum_outer - self.count * np.outer(centered_mean, centered_mean)
          ) / (self.count - 1)
    return 0.5 * (cov + cov.T)

  def frechet_distance(self, other: 'RunningStats') -> float:
    return frechet_distance(self.mean(), self.cov(), other.mean(), other.cov())

  def to_npz(self, path: PathLike) -> None:
    np.savez(path, count=np.int64(self.count), shift=self.shift, sum=self.sum,
             sum_outer=self.sum_outer)

  @classmethod
  def from_npz(cls, path: PathLike) -> 'RunningStats':
    with np.load(path, allow_pickle=False) as data:
      stats = cls(data['shift'].shape[0])
      stats.count = int(data['count'])
      stats.shift = np.asarray(data['shift'], np.float64)
      stats.sum = np.asarray(data['sum'], np.float64)
      stats.sum_outer = np.asarray(data['sum_outer'], np.float64)
    return stats

  @classmethod
  def from_features(cls, features) -> 'RunningStats':
    features = np.asarray(features)
    return cls(features.shape[-1]).update(features)

  def __repr__(self):
    return f'RunningStats(dim={self.dim}, count={self.count})'
