"""Tests of the evaluation metrics: Fréchet distance, streamed statistics,
the FID Inception network and its weight conversion, FD-digits."""

import importlib.util
import os

import flax
import jax
import numpy as np
import pytest
import scipy.linalg

from configs import base
from diffusion_distill import input_pipeline
from diffusion_distill.evaluation import digits_classifier
from diffusion_distill.evaluation import frechet
from diffusion_distill.evaluation import inception
from diffusion_distill.evaluation import metrics

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _random_cov(rng, dim, rank=None):
  a = rng.normal(size=(dim, rank or dim))
  return a @ a.T / (rank or dim)


# ---- Fréchet distance and RunningStats. ------------------------------------


def test_frechet_distance_diagonal_closed_form():
  rng = np.random.default_rng(0)
  mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
  s1, s2 = rng.uniform(0.1, 3.0, 16), rng.uniform(0.1, 3.0, 16)
  expected = np.sum((mu1 - mu2)**2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
  got = frechet.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
  np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_frechet_distance_non_diagonal():
  rng = np.random.default_rng(1)
  dim = 12
  mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
  # Covariances sharing eigenvectors: the trace term is sum sqrt(a_i b_i).
  q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
  a, b = rng.uniform(0.1, 2.0, dim), rng.uniform(0.1, 2.0, dim)
  cov1, cov2 = (q * a) @ q.T, (q * b) @ q.T
  expected = (np.sum((mu1 - mu2)**2) + np.sum(a) + np.sum(b) -
              2 * np.sum(np.sqrt(a * b)))
  np.testing.assert_allclose(
      frechet.frechet_distance(mu1, cov1, mu2, cov2), expected, rtol=1e-10)
  # General position: against the textbook formula with scipy's sqrtm.
  cov1, cov2 = _random_cov(rng, dim), _random_cov(rng, dim)
  direct = (np.sum((mu1 - mu2)**2) + np.trace(cov1) + np.trace(cov2) -
            2 * np.trace(scipy.linalg.sqrtm(cov1 @ cov2)).real)
  np.testing.assert_allclose(
      frechet.frechet_distance(mu1, cov1, mu2, cov2), direct, rtol=1e-8)


def test_frechet_distance_identical_statistics_is_zero():
  rng = np.random.default_rng(2)
  # Rank-deficient, as with fewer samples than feature dimensions.
  features = rng.normal(size=(40, 64)) * rng.uniform(0.1, 5.0, 64) + 3.0
  mu, cov = features.mean(0), np.cov(features, rowvar=False)
  distance = frechet.frechet_distance(mu, cov, mu, cov)
  assert abs(distance) < 1e-6 * np.trace(cov)
  with pytest.raises(ValueError, match='shape'):
    frechet.frechet_distance(mu, cov, mu[:3], cov)


def test_running_stats_matches_numpy_and_merges(tmp_path):
  rng = np.random.default_rng(3)
  # A large common offset: a naive sum of outer products would lose the
  # covariance to cancellation.
  features = rng.normal(size=(1000, 8)) * rng.uniform(0.5, 2.0, 8) + 1e6
  stats = frechet.RunningStats(8)
  for batch in np.array_split(features, 7):
    stats.update(batch)
  assert stats.count == 1000
  np.testing.assert_allclose(stats.mean(), features.mean(0), rtol=1e-14)
  np.testing.assert_allclose(stats.cov(), np.cov(features, rowvar=False),
                             rtol=1e-8, atol=1e-10)

  first = frechet.RunningStats.from_features(features[:300])
  second = frechet.RunningStats.from_features(features[300:])
  merged = first.merge(second)
  np.testing.assert_allclose(merged.mean(), stats.mean(), rtol=1e-14)
  np.testing.assert_allclose(merged.cov(), stats.cov(), rtol=1e-8)
  empty = frechet.RunningStats(8).merge(stats)
  np.testing.assert_allclose(empty.cov(), stats.cov(), rtol=1e-12)

  stats.to_npz(tmp_path / 'stats.npz')
  loaded = frechet.RunningStats.from_npz(tmp_path / 'stats.npz')
  assert loaded.count == stats.count
  np.testing.assert_array_equal(loaded.cov(), stats.cov())
  with pytest.raises(ValueError, match=r'\[B, 8\]'):
    stats.update(np.zeros((2, 9)))


# ---- The FID Inception network. --------------------------------------------

# 5 stem + 3x7 (35x35) + 4 + 4x10 (17x17) + 6 + 2x9 (8x8) convolutions.
_NUM_CONVS = 94


def _random_inception_params(seed=0):
  """Weights that keep activations O(1) through the 94 layers, cheaply."""
  rng = np.random.default_rng(seed)
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(
      inception.abstract_params())[0]:
    key = '/'.join(p.key for p in path)
    name = key.rsplit('/', 1)[1]
    if name == 'kernel':
      fan_in = np.prod(leaf.shape[:3])
      value = rng.normal(size=leaf.shape) * np.sqrt(2.0 / fan_in)
    elif name in ('gamma', 'moving_variance'):
      value = rng.uniform(0.5, 1.5, leaf.shape)
    else:
      value = rng.normal(size=leaf.shape) * 0.1
    flat[key] = value.astype(np.float32)
  return inception.unflatten_params(flat)


@pytest.fixture(scope='module')
def inception_params():
  return _random_inception_params()


def test_inception_parameter_tree():
  shapes = {'/'.join(k): v.shape for k, v in
            flax.traverse_util.flatten_dict(
                inception.abstract_params()).items()}
  kernels = [k for k in shapes if k.endswith('/kernel')]
  assert len(kernels) == _NUM_CONVS
  assert len(shapes) == 5 * _NUM_CONVS + 2
  assert shapes['conv/kernel'] == (3, 3, 3, 32)
  assert shapes['conv_4/kernel'] == (3, 3, 80, 192)
  assert shapes['mixed/tower_2/conv/kernel'] == (1, 1, 192, 32)
  assert shapes['mixed_3/conv/kernel'] == (3, 3, 288, 384)
  assert shapes['mixed_4/tower/conv_1/kernel'] == (1, 7, 128, 128)
  assert shapes['mixed_4/tower_1/conv_4/kernel'] == (1, 7, 128, 192)
  assert shapes['mixed_8/tower_1/conv_3/kernel'] == (3, 3, 192, 192)
  assert shapes['mixed_9/tower_1/conv/kernel'] == (1, 1, 1280, 448)
  assert shapes['mixed_10/tower_1/mixed/conv_1/kernel'] == (3, 1, 384, 384)
  assert shapes['mixed_10/tower_2/conv/moving_variance'] == (192,)
  assert shapes['softmax/weights'] == (2048, 1008)
  assert shapes['softmax/biases'] == (1008,)
  # torchvision's Inception-v3 has 27,161,264 parameters; without its
  # auxiliary head (3,326,696) and 1000-way classifier (2,049,000) that
  # leaves the convolutions and two BN vectors (gamma, beta) per conv.
  conv_weights = sum(np.prod(shapes[k]) for k in kernels)
  bn_channels = sum(shapes[k][-1] for k in kernels)
  assert conv_weights + 2 * bn_channels == 27_161_264 - 3_326_696 - 2_049_000
  assert sum(np.prod(s) for s in shapes.values()) == (
      conv_weights + 4 * bn_channels + 2048 * 1008 + 1008)


def test_inception_forward_shapes(inception_params):
  images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 1), np.uint8)
  features, logits = inception.features_and_logits(inception_params, images)
  assert features.shape == (2, inception.FEATURE_DIM)
  assert logits.shape == (2, inception.NUM_LOGITS)
  assert np.all(np.isfinite(features)) and np.all(np.isfinite(logits))
  # Inception Score's logits are pool_3 @ weights, without the bias.
  np.testing.assert_allclose(
      logits, np.asarray(features) @ inception_params['softmax']['weights'],
      rtol=1e-4, atol=1e-4 * float(np.abs(logits).max()))


def test_tf1_resize_matrix():
  m = inception._tf1_resize_matrix(2, 4)  # pylint: disable=protected-access
  # Legacy TF samples at i * in / out: 0, 0.5, 1, 1.5 (clamped to pixel 1).
  np.testing.assert_allclose(
      m, [[1, 0], [0.5, 0.5], [0, 1], [0, 1]], atol=1e-7)
  np.testing.assert_allclose(inception._tf1_resize_matrix(299, 299),  # pylint: disable=protected-access
                             np.eye(299), atol=0)
  x = inception.preprocess(np.full((1, 5, 7, 1), 255, np.uint8))
  assert x.shape == (1, 299, 299, 3)
  np.testing.assert_allclose(x, 127 / 128, rtol=1e-6)


def test_preprocessing_and_pools_match_tensorflow():
  """The reference graph's ops, in TF itself: legacy resize, SAME pools."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2, 8, 11, 3)).astype(np.uint8)
  expected = tf.compat.v1.image.resize_bilinear(
      images.astype(np.float32), [299, 299], align_corners=False,
      half_pixel_centers=False).numpy()
  np.testing.assert_allclose(inception.preprocess(images),
                             (expected - 128.0) / 128.0, atol=2e-5)
  x = rng.normal(size=(1, 5, 5, 4)).astype(np.float32)
  np.testing.assert_allclose(
      inception._avg_pool_3x3(x),  # pylint: disable=protected-access
      tf.nn.avg_pool2d(x, 3, 1, 'SAME').numpy(), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(
      inception._max_pool_3x3(-np.abs(x)),  # pylint: disable=protected-access
      tf.nn.max_pool2d(-np.abs(x), 3, 1, 'SAME').numpy())


def test_inception_score():
  assert inception.inception_score(np.zeros((10, 1008))) == pytest.approx(1.0)
  one_hot = np.eye(10) * 50.0
  assert inception.inception_score(one_hot) == pytest.approx(10.0, rel=1e-6)
  splits = inception.inception_score_splits(np.tile(one_hot, (2, 1)), 2)
  np.testing.assert_allclose(splits, [10.0, 10.0], rtol=1e-6)


def test_inception_weight_conversion_round_trip(inception_params, tmp_path):
  tf_weights = inception.params_to_tf_weights(inception_params)
  assert len(tf_weights) == 5 * _NUM_CONVS + 2
  for name in ('conv/conv2d_params', 'conv/batchnorm/moving_variance',
               'mixed_3/tower/conv_2/batchnorm/beta',
               'mixed_10/tower_1/mixed/conv_1/conv2d_params',
               'mixed_9/tower/mixed/conv/batchnorm/gamma',
               'softmax/weights', 'softmax/biases'):
    assert name in tf_weights, name
  # The graph's other constants (resize size, normalization) are ignored.
  tf_weights['Sub/y'] = np.float32(128.0)
  tf_weights['ResizeBilinear/size'] = np.array([299, 299], np.int32)
  converted = inception.tf_weights_to_params(tf_weights)
  jax.tree_util.tree_map(np.testing.assert_array_equal, converted,
                         inception_params)

  path = tmp_path / 'fid_inception.npz'
  inception.save_inception_params(path, converted)
  with np.load(path, allow_pickle=False) as data:
    assert 'mixed_4/tower_1/conv_2/kernel' in data.files
  loaded = inception.load_inception_params(path)
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded,
                         inception_params)

  del tf_weights['mixed_5/tower/conv_1/batchnorm/moving_mean']
  with pytest.raises(ValueError, match='lack 1 Inception parameters'):
    inception.tf_weights_to_params(tf_weights)


def _load_converter_script():
  path = os.path.join(_REPO, 'scripts', 'convert_inception_weights.py')
  spec = importlib.util.spec_from_file_location('convert_inception_weights',
                                                path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_converter_reads_graph_def(tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  converter = _load_converter_script()
  graph_def = tf.compat.v1.GraphDef()
  arrays = {'conv/conv2d_params': np.arange(6, dtype=np.float32).reshape(
      1, 1, 2, 3),
            'conv/batchnorm/gamma': np.full((3,), 2.0, np.float32),
            'conv/batchnorm/beta': np.array([1, 2, 3], np.float32)}
  for name, value in arrays.items():
    node = graph_def.node.add(name=name, op='Const')
    node.attr['value'].tensor.CopyFrom(tf.make_tensor_proto(value))
    node.attr['dtype'].type = tf.float32.as_datatype_enum
  bn = graph_def.node.add(name='conv/batchnorm',
                          op='BatchNormWithGlobalNormalization')
  bn.attr['variance_epsilon'].f = 0.001
  bn.attr['scale_after_normalization'].b = False
  path = tmp_path / 'graph.pb'
  path.write_bytes(graph_def.SerializeToString())

  constants, batchnorms = converter.read_graph_constants(str(path))
  assert sorted(constants) == sorted(arrays)
  for name, value in arrays.items():
    np.testing.assert_array_equal(constants[name], value)
  assert batchnorms['conv/batchnorm']['scale_after_normalization'] is False
  folded = converter.apply_batchnorm_attributes(constants, batchnorms)
  # TF ignores gamma when scale_after_normalization is false.
  np.testing.assert_array_equal(folded['conv/batchnorm/gamma'], np.ones(3))
  batchnorms['conv/batchnorm']['variance_epsilon'] = 1e-5
  with pytest.raises(ValueError, match='variance_epsilon'):
    converter.apply_batchnorm_attributes(constants, batchnorms)


def test_missing_inception_weights_names_converter(tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    inception.load_inception_params(tmp_path / 'absent.npz')
  message = str(error.value)
  assert 'scripts/convert_inception_weights.py' in message
  assert 'absent.npz' in message and '\n' not in message


# ---- The digits classifier and FD-digits. ----------------------------------


@pytest.fixture(scope='module')
def classifier():
  return digits_classifier.load_digits_classifier()


@pytest.fixture(scope='module')
def digits():
  return digits_classifier.load_digits()


@pytest.fixture(scope='module')
def reference_stats(classifier):
  images, _ = digits_classifier.load_digits()
  stats, _ = metrics.measure(metrics.DigitsMetric(classifier), [images])
  return stats


def test_digits_match_tfds_builder(digits_dir, digits):
  config = base.get_config()
  config.dataset.name = 'digits'
  config.dataset.data_dir = digits_dir
  np.testing.assert_array_equal(input_pipeline.load_all_images(config),
                                digits[0])


def test_digits_split_is_fixed():
  train, heldout = digits_classifier.digits_split()
  assert (len(train), len(heldout)) == (1500, 297)
  assert not set(train) & set(heldout)
  assert np.sum(heldout) == np.sum(digits_classifier.digits_split()[1])


def test_digits_classifier_accuracy(classifier, digits):
  images, labels = digits
  _, heldout = digits_classifier.digits_split()
  _, logits = digits_classifier.digits_features_and_logits(
      classifier, images[heldout])
  accuracy = np.mean(np.argmax(logits, -1) == labels[heldout])
  assert accuracy >= 0.95


def _noised(images, std, seed=0):
  noise = np.random.default_rng(seed).normal(0, std, images.shape)
  return np.clip(np.round(images + noise), 0, 255).astype(np.uint8)


def _blurred(images):
  padded = np.pad(images.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)),
                  mode='edge')
  box = sum(padded[:, i:i + 8, j:j + 8] for i in range(3) for j in range(3))
  return np.round(box / 9).astype(np.uint8)


def test_fd_digits_separates_real_from_degraded(classifier, digits,
                                                reference_stats):
  images, _ = digits
  _, heldout = digits_classifier.digits_split()
  half = np.random.default_rng(0).permutation(len(images))[:len(images) // 2]

  metric = metrics.DigitsMetric(classifier)

  def fd(x):
    stats, class_stats = metrics.measure(metric, [x])
    return metric.summarize(stats, class_stats, reference_stats)['fd_digits']

  real_heldout, real_half = fd(images[heldout]), fd(images[half])
  noised, blurred = fd(_noised(images[heldout], 64)), fd(_blurred(images))
  print(f'FD-digits: held-out {real_heldout:.3f}, half {real_half:.3f}, '
        f'noised {noised:.3f}, blurred {blurred:.3f}')
  assert real_heldout * 10 < noised
  assert real_half * 10 < min(noised, blurred)


def _confidence_and_coverage(logits):
  return metrics.ClassStats(logits.shape[1]).update(
      logits).confidence_and_coverage()


def test_confidence_and_coverage(classifier, digits):
  images, _ = digits
  _, heldout = digits_classifier.digits_split()
  _, real_logits = digits_classifier.digits_features_and_logits(
      classifier, images[heldout])
  noise = np.random.default_rng(0).integers(0, 256, (297, 8, 8, 1), np.uint8)
  _, noise_logits = digits_classifier.digits_features_and_logits(classifier,
                                                                 noise)
  real = _confidence_and_coverage(real_logits)
  fake = _confidence_and_coverage(noise_logits)
  print(f'confidence, coverage: real {real}, uniform noise {fake}')
  assert real[0] > 0.9 and real[1] > 0.9
  assert fake[0] < 0.5 and fake[1] < 0.5
  # Mode collapse: every sample the same class.
  collapsed = np.tile(real_logits[:1], (50, 1))
  confidence, coverage = _confidence_and_coverage(collapsed)
  assert coverage == pytest.approx(confidence / 10)
  # Two classes, equally often, with certainty: 2 of 10 classes covered.
  two = np.repeat(np.eye(10)[:2] * 100.0, 5, axis=0)
  assert _confidence_and_coverage(two) == (
      pytest.approx(1.0), pytest.approx(0.2))


def test_inception_metric_is_pmapped_and_pads_batches(tmp_path):
  """The eval stage's Inception metric over 4 devices equals one device."""
  import jax  # pylint: disable=g-import-not-at-top
  from diffusion_distill.evaluation import inception  # pylint: disable=g-import-not-at-top
  import flax.traverse_util  # pylint: disable=g-import-not-at-top
  rs = np.random.RandomState(0)
  flat = flax.traverse_util.flatten_dict(inception.abstract_params())
  params = flax.traverse_util.unflatten_dict({
      k: (np.ones(s.shape) if k[-1] == 'moving_variance' else
          rs.normal(size=s.shape) * 0.05).astype(np.float32)
      for k, s in flat.items()})
  path = str(tmp_path / 'w.npz')
  inception.save_inception_params(path, params)
  metric = metrics.InceptionMetric(path)
  images = rs.randint(0, 256, (5, 16, 16, 3)).astype(np.uint8)  # 5 % 4 != 0
  features, logits = metric.features_and_logits(images)
  want_f, want_l = inception.features_and_logits(params, images)
  assert features.shape == (5, 2048) and logits.shape == (5, 1008)
  np.testing.assert_allclose(features, want_f, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(logits, want_l, rtol=1e-4, atol=1e-4)
