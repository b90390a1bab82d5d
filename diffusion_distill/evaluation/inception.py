"""The FID Inception-v3 network in flax.linen: pool_3 features and logits.

This is the network of the TF graph `classify_image_graph_def.pb`
(inception-2015-12-05) that the original FID code (TTUR) and Inception Score
code (improved-GAN) run, not Keras' or torchvision's Inception-v3. Its
differences matter for comparable numbers:

* input: images with values in [0, 255] (any size, 1 or 3 channels) are
  resized to 299x299 with TF1's legacy bilinear resize (no half-pixel
  offset, `align_corners=False`), then mapped to [-1, 1) as (x - 128) / 128;
* batch norm epsilon 0.001, convolutions without bias;
* 3x3 average pools inside the blocks exclude the padding from the count;
* the last block (`mixed_10`) pools its tower_2 branch with a MAX pool;
* 1008 output classes; Inception Score uses the logits WITHOUT the bias
  (`pool_3 @ softmax/weights`, as improved-GAN reads the MatMul's input),
  which `features_and_logits` returns.

Parameters
----------
The Flax tree mirrors the TF name scopes, so `mixed_4/tower_1/conv_2` in the
graph is `params['mixed_4']['tower_1']['conv_2']` here. Every convolution
`.../<conv>` holds

  kernel            [kh, kw, in, out]   TF `<conv>/conv2d_params`
  beta, gamma       [out]               TF `<conv>/batchnorm/beta`, `/gamma`
  moving_mean       [out]               TF `<conv>/batchnorm/moving_mean`
  moving_variance   [out]               TF `<conv>/batchnorm/moving_variance`

and the classifier `softmax` holds `weights` [2048, 1008] and `biases`
[1008] (TF `softmax/weights`, `softmax/biases`). Scopes: stem `conv`,
`conv_1` ... `conv_4`; blocks `mixed` ... `mixed_10`, each with `conv`,
`tower`, `tower_1`, `tower_2` (a tower's convolutions are `conv`, `conv_1`,
...; the 8x8 blocks split their last layer into `tower/mixed/conv` (1x3) and
`tower/mixed/conv_1` (3x1)). `tf_weights_to_params` / `params_to_tf_weights`
convert between this tree and the graph's constant names.

On disk (`save_inception_params`) the tree is an `.npz` of float32 arrays
keyed by the '/'-joined path, e.g. 'mixed_4/tower_1/conv_2/kernel'.
"""

import functools
import os
from typing import Any, Dict, Optional, Tuple, Union

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

PathLike = Union[str, os.PathLike]
Params = Dict[str, Any]

INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_LOGITS = 1008
BATCHNORM_EPSILON = 1e-3

CONVERTER_SCRIPT = 'scripts/convert_inception_weights.py'
# Overrides the default location of the converted weights.
WEIGHTS_ENV_VAR = 'DIFFUSION_DISTILL_INCEPTION_WEIGHTS'
DEFAULT_WEIGHTS_PATH = os.path.join('~', '.cache', 'diffusion_distill',
                                    'fid_inception_v3.npz')

# FID numbers move in the second digit when TPU/GPU matmuls drop to bf16 or
# TF32, so every contraction asks for full float32.
_PRECISION = jax.lax.Precision.HIGHEST

# (features, (kh, kw), stride, padding) of one convolution + batch norm + ReLU.
ConvSpec = Tuple[int, Tuple[int, int], int, str]


def _conv_name(index: int) -> str:
  # TF's layer scopes: conv, conv_1, conv_2, ...
  return 'conv' if index == 0 else f'conv_{index}'


class ConvBN(nn.Module):
  """Convolution (no bias), inference batch norm, ReLU."""
  features: int
  kernel_size: Tuple[int, int]
  strides: int = 1
  padding: str = 'SAME'

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel_size
    kernel = self.param(
        'kernel', nn.initializers.variance_scaling(2.0, 'fan_in', 'normal'),
        (kh, kw, x.shape[-1], self.features))
    beta = self.param('beta', nn.initializers.zeros, (self.features,))
    gamma = self.param('gamma', nn.initializers.ones, (self.features,))
    mean = self.param('moving_mean', nn.initializers.zeros, (self.features,))
    var = self.param('moving_variance', nn.initializers.ones,
                     (self.features,))
    y = jax.lax.conv_general_dilated(
        x, kernel, (self.strides, self.strides), self.padding,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=_PRECISION)
    scale = gamma * jax.lax.rsqrt(var + BATCHNORM_EPSILON)
    return nn.relu(y * scale + (beta - mean * scale))


def _conv_chain(specs: Tuple[ConvSpec, ...], x):
  # Called inside a compact method: the layers become children of the caller,
  # named like TF's `conv`, `conv_1`, ...
  for index, (features, kernel, stride, padding) in enumerate(specs):
    x = ConvBN(features, kernel, stride, padding, name=_conv_name(index))(x)
  return x


class Tower(nn.Module):
  """A chain of ConvBN layers (one TF `tower` scope)."""
  specs: Tuple[ConvSpec, ...]

  @nn.compact
  def __call__(self, x):
    return _conv_chain(self.specs, x)


class SplitTower(nn.Module):
  """A Tower whose output goes through parallel 1x3 and 3x1 convolutions."""
  specs: Tuple[ConvSpec, ...]
  split_features: int = 384

  @nn.compact
  def __call__(self, x):
    x = _conv_chain(self.specs, x)
    return _Split(self.split_features, name='mixed')(x)


class _Split(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x):
    return jnp.concatenate([
        ConvBN(self.features, (1, 3), name='conv')(x),
        ConvBN(self.features, (3, 1), name='conv_1')(x)], axis=-1)


def _avg_pool_3x3(x):
  # TF's SAME average pool divides by the number of real pixels in the window.
  return nn.avg_pool(x, (3, 3), (1, 1), 'SAME', count_include_pad=False)


def _max_pool_3x3(x, stride=1, padding='SAME'):
  return nn.max_pool(x, (3, 3), (stride, stride), padding)


def _1x1(features):
  return (features, (1, 1), 1, 'SAME')


def _kxk(features, kh, kw=None, stride=1, padding='SAME'):
  return (features, (kh, kw or kh), stride, padding)


class BlockA(nn.Module):
  """35x35 block (`mixed`, `mixed_1`, `mixed_2`)."""
  pool_features: int

  @nn.compact
  def __call__(self, x):
    return jnp.concatenate([
        ConvBN(64, (1, 1), name='conv')(x),
        Tower((_1x1(48), _kxk(64, 5)), name='tower')(x),
        Tower((_1x1(64), _kxk(96, 3), _kxk(96, 3)), name='tower_1')(x),
        Tower((_1x1(self.pool_features),), name='tower_2')(_avg_pool_3x3(x)),
    ], axis=-1)


class BlockB(nn.Module):
  """35x35 -> 17x17 reduction (`mixed_3`)."""

  @nn.compact
  def __call__(self, x):
    return jnp.concatenate([
        ConvBN(384, (3, 3), 2, 'VALID', name='conv')(x),
        Tower((_1x1(64), _kxk(96, 3), _kxk(96, 3, stride=2, padding='VALID')),
              name='tower')(x),
        _max_pool_3x3(x, 2, 'VALID'),
    ], axis=-1)


class BlockC(nn.Module):
  """17x17 block with factorized 7x7 convolutions (`mixed_4` ... `mixed_7`)."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c = self.channels_7x7
    return jnp.concatenate([
        ConvBN(192, (1, 1), name='conv')(x),
        Tower((_1x1(c), _kxk(c, 1, 7), _kxk(192, 7, 1)), name='tower')(x),
        Tower((_1x1(c), _kxk(c, 7, 1), _kxk(c, 1, 7), _kxk(c, 7, 1),
               _kxk(192, 1, 7)), name='tower_1')(x),
        Tower((_1x1(192),), name='tower_2')(_avg_pool_3x3(x)),
    ], axis=-1)


class BlockD(nn.Module):
  """17x17 -> 8x8 reduction (`mixed_8`)."""

  @nn.compact
  def __call__(self, x):
    return jnp.concatenate([
        Tower((_1x1(192), _kxk(320, 3, stride=2, padding='VALID')),
              name='tower')(x),
        Tower((_1x1(192), _kxk(192, 1, 7), _kxk(192, 7, 1),
               _kxk(192, 3, stride=2, padding='VALID')), name='tower_1')(x),
        _max_pool_3x3(x, 2, 'VALID'),
    ], axis=-1)


class BlockE(nn.Module):
  """8x8 block (`mixed_9`, `mixed_10`).

  `max_pool`: the graph's `mixed_10/tower_2/pool` is a max pool where the
  Inception-v3 paper (and `mixed_9`) average; FID is defined by the graph.
  """
  max_pool: bool = False

  @nn.compact
  def __call__(self, x):
    pooled = _max_pool_3x3(x) if self.max_pool else _avg_pool_3x3(x)
    return jnp.concatenate([
        ConvBN(320, (1, 1), name='conv')(x),
        SplitTower((_1x1(384),), name='tower')(x),
        SplitTower((_1x1(448), _kxk(384, 3)), name='tower_1')(x),
        Tower((_1x1(192),), name='tower_2')(pooled),
    ], axis=-1)


class Softmax(nn.Module):
  """The 1008-way classifier on pool_3 (TF scope `softmax`)."""

  @nn.compact
  def __call__(self, features, use_bias: bool):
    weights = self.param('weights', nn.initializers.lecun_normal(),
                         (FEATURE_DIM, NUM_LOGITS))
    biases = self.param('biases', nn.initializers.zeros, (NUM_LOGITS,))
    logits = jnp.dot(features, weights, precision=_PRECISION)
    return logits + biases if use_bias else logits


class InceptionV3(nn.Module):
  """FID Inception-v3 on preprocessed [B, 299, 299, 3] inputs in [-1, 1).

  Returns (pool_3 features [B, 2048], logits [B, 1008]); the logits omit the
  classifier bias unless `logits_use_bias`, as Inception Score defines them.
  """
  logits_use_bias: bool = False

  @nn.compact
  def __call__(self, x):
    x = ConvBN(32, (3, 3), 2, 'VALID', name='conv')(x)      # 149
    x = ConvBN(32, (3, 3), 1, 'VALID', name='conv_1')(x)    # 147
    x = ConvBN(64, (3, 3), 1, 'SAME', name='conv_2')(x)     # 147
    x = _max_pool_3x3(x, 2, 'VALID')                        # 73
    x = ConvBN(80, (1, 1), 1, 'VALID', name='conv_3')(x)    # 73
    x = ConvBN(192, (3, 3), 1, 'VALID', name='conv_4')(x)   # 71
    x = _max_pool_3x3(x, 2, 'VALID')                        # 35
    x = BlockA(32, name='mixed')(x)                         # 35x35x256
    x = BlockA(64, name='mixed_1')(x)                       # 288
    x = BlockA(64, name='mixed_2')(x)                       # 288
    x = BlockB(name='mixed_3')(x)                           # 17x17x768
    x = BlockC(128, name='mixed_4')(x)
    x = BlockC(160, name='mixed_5')(x)
    x = BlockC(160, name='mixed_6')(x)
    x = BlockC(192, name='mixed_7')(x)                      # 768
    x = BlockD(name='mixed_8')(x)                           # 8x8x1280
    x = BlockE(max_pool=False, name='mixed_9')(x)           # 2048
    x = BlockE(max_pool=True, name='mixed_10')(x)           # 2048
    # pool_3 is an 8x8 VALID average pool over the 8x8 map: a plain mean.
    features = jnp.mean(x, axis=(1, 2))
    logits = Softmax(name='softmax')(features, self.logits_use_bias)
    return features, logits


def _tf1_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] interpolation weights of TF1's legacy bilinear ResizeBilinear.

  Legacy TF samples output pixel i at input coordinate i * in / out (no
  half-pixel centres), unlike jax.image.resize; FID depends on this.
  """
  scale = np.float32(in_size) / np.float32(out_size)
  src = np.arange(out_size, dtype=np.float32) * scale
  lower = np.floor(src).astype(np.int64)
  upper = np.minimum(lower + 1, in_size - 1)
  frac = (src - lower).astype(np.float64)
  weights = np.zeros((out_size, in_size), np.float64)
  rows = np.arange(out_size)
  np.add.at(weights, (rows, lower), 1.0 - frac)
  np.add.at(weights, (rows, upper), frac)
  return weights.astype(np.float32)


def preprocess(images) -> jnp.ndarray:
  """uint8 / float [B, H, W, C] with values in [0, 255] -> [B, 299, 299, 3].

  Grayscale (C = 1) is repeated to RGB. Floats must use the [0, 255] range
  too (as the reference graph's input does), not [-1, 1] or [0, 1].
  """
  x = jnp.asarray(images).astype(jnp.float32)
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ValueError(f'Inception needs images [B, H, W, 1 or 3]; got shape '
                     f'{x.shape}.')
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  _, height, width, _ = x.shape
  if (height, width) != (INPUT_SIZE, INPUT_SIZE):
    # Separable: the resize is one matrix per axis, exact and cheap to jit.
    resize_h = jnp.asarray(_tf1_resize_matrix(height, INPUT_SIZE))
    resize_w = jnp.asarray(_tf1_resize_matrix(width, INPUT_SIZE))
    x = jnp.einsum('oh,bhwc->bowc', resize_h, x, precision=_PRECISION)
    x = jnp.einsum('pw,bowc->bopc', resize_w, x, precision=_PRECISION)
  return (x - 128.0) / 128.0


def apply_inception(params: Params, images, logits_use_bias: bool = False):
  """Pure (jit/pmap-able) images in [0, 255] -> (features, logits)."""
  return InceptionV3(logits_use_bias=logits_use_bias).apply(
      {'params': params}, preprocess(images))


@functools.partial(jax.jit, static_argnames=('logits_use_bias',))
def features_and_logits(params: Params, images, logits_use_bias: bool = False):
  """pool_3 features [B, 2048] and logits [B, 1008] (float32, on device).

  `images`: uint8 or float [B, H, W, 1 or 3] in [0, 255], any H, W. The
  logits omit the classifier bias (Inception Score's definition) unless
  `logits_use_bias`.
  """
  return apply_inception(params, images, logits_use_bias)


def abstract_params() -> Params:
  """Shapes and dtypes of the parameter tree, without computing anything."""
  dummy = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  variables = jax.eval_shape(
      lambda x: InceptionV3().init(jax.random.PRNGKey(0), x), dummy)
  return flax.core.unfreeze(variables['params'])


def inception_score(logits, num_splits: int = 1) -> float:
  """exp(E_x KL(p(y|x) || p(y))), averaged over `num_splits` equal splits.

  The reference reports the mean (and std) over 10 splits of 50k samples;
  `inception_score_splits` gives the per-split values.
  """
  return float(np.mean(inception_score_splits(logits, num_splits)))


def inception_score_splits(logits, num_splits: int = 1) -> np.ndarray:
  """Inception Score of each of `num_splits` consecutive equal splits."""
  logits = np.asarray(logits, np.float64)
  if logits.ndim != 2 or logits.shape[0] < num_splits or num_splits < 1:
    raise ValueError(f'inception_score needs logits [N, K] with N >= '
                     f'num_splits >= 1; got {logits.shape}, {num_splits}.')
  log_p = logits - logits.max(axis=1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
  scores = []
  for part in np.array_split(log_p, num_splits):
    p = np.exp(part)
    log_marginal = np.log(p.mean(axis=0))
    kl = np.sum(p * (part - log_marginal), axis=1)
    scores.append(np.exp(kl.mean()))
  return np.asarray(scores)


# ---- Conversion between the TF graph's constants and the Flax tree. --------

_TF_LEAF_NAMES = {
    'kernel': 'conv2d_params',
    'beta': 'batchnorm/beta',
    'gamma': 'batchnorm/gamma',
    'moving_mean': 'batchnorm/moving_mean',
    'moving_variance': 'batchnorm/moving_variance',
    # The classifier's leaves already carry TF's names.
    'weights': 'weights',
    'biases': 'biases',
}
_FLAX_LEAF_NAMES = {tf: flax_name for flax_name, tf in _TF_LEAF_NAMES.items()}


def flatten_params(params: Params) -> Dict[str, np.ndarray]:
  """{'a': {'b': x}} -> {'a/b': x}."""
  return {'/'.join(path): np.asarray(value) for path, value in
          flax.traverse_util.flatten_dict(flax.core.unfreeze(params)).items()}


def _expected_shapes() -> Dict[str, Tuple[int, ...]]:
  return dict(_cached_expected_shapes())


@functools.lru_cache(maxsize=None)
def _cached_expected_shapes():
  # Tracing the whole network takes a second or two; shapes never change.
  return {'/'.join(path): tuple(value.shape) for path, value in
          flax.traverse_util.flatten_dict(abstract_params()).items()}


def unflatten_params(flat: Dict[str, np.ndarray]) -> Params:
  return flax.traverse_util.unflatten_dict(
      {tuple(key.split('/')): value for key, value in flat.items()})


def params_to_tf_weights(params: Params) -> Dict[str, np.ndarray]:
  """Flax tree -> {TF graph constant name: array} (see module docstring)."""
  tf_weights = {}
  for key, value in flatten_params(params).items():
    scope, leaf = key.rsplit('/', 1)
    tf_weights[f'{scope}/{_TF_LEAF_NAMES[leaf]}'] = value
  return tf_weights


def _tf_name_to_key(tf_name: str) -> Optional[str]:
  for tf_leaf, flax_leaf in _FLAX_LEAF_NAMES.items():
    if tf_name.endswith('/' + tf_leaf):
      return f'{tf_name[:-len(tf_leaf) - 1]}/{flax_leaf}'
  return None


def tf_weights_to_params(tf_weights: Dict[str, np.ndarray]) -> Params:
  """{TF graph constant name: array} -> Flax tree, checked against the model.

  Constants the network does not use (the graph also holds e.g. the resize
  size and the normalization scalars) are ignored; a missing constant or a
  shape that differs from the model's raises ValueError naming it.
  """
  expected = _expected_shapes()
  flat = {}
  for tf_name, value in tf_weights.items():
    key = _tf_name_to_key(tf_name)
    if key in expected:
      flat[key] = np.asarray(value, np.float32)
  _check_flat(flat, expected, 'the TF weights')
  return unflatten_params(flat)


def _check_flat(flat, expected, source):
  missing = sorted(set(expected) - set(flat))
  if missing:
    raise ValueError(f'{source} lack {len(missing)} Inception parameters, '
                     f'e.g. {missing[0]!r}.')
  unexpected = sorted(set(flat) - set(expected))
  if unexpected:
    raise ValueError(f'{source} hold {len(unexpected)} unknown parameters, '
                     f'e.g. {unexpected[0]!r}.')
  for key, shape in expected.items():
    if flat[key].shape != tuple(shape):
      raise ValueError(f'{source}: {key!r} has shape {flat[key].shape}, the '
                       f'network needs {tuple(shape)}.')


def save_inception_params(path: PathLike, params: Params) -> None:
  """Writes the tree as an .npz of float32 arrays keyed 'a/b/c'."""
  flat = {key: np.asarray(value, np.float32)
          for key, value in flatten_params(params).items()}
  path = os.fspath(path)
  if os.path.dirname(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
  # Write then rename, so an interrupted conversion leaves no truncated file
  # that a later run would take for weights.
  tmp_path = path + '.tmp.npz'
  np.savez(tmp_path, **flat)
  os.replace(tmp_path, path)


def default_weights_path() -> str:
  return os.path.expanduser(os.environ.get(WEIGHTS_ENV_VAR) or
                            DEFAULT_WEIGHTS_PATH)


def load_inception_params(path: Optional[PathLike] = None) -> Params:
  """Reads weights written by `save_inception_params` (the converter's output).

  `path` defaults to $DIFFUSION_DISTILL_INCEPTION_WEIGHTS, else
  ~/.cache/diffusion_distill/fid_inception_v3.npz.
  """
  path = os.path.expanduser(os.fspath(path)) if path else default_weights_path()
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'FID Inception weights not found at {path}: extract '
        f'classify_image_graph_def.pb from inception-2015-12-05.tgz and run '
        f'`python {CONVERTER_SCRIPT} --graph_def=classify_image_graph_def.pb '
        f'--output={path}` (or set ${WEIGHTS_ENV_VAR}).')
  with np.load(path, allow_pickle=False) as data:
    flat = {key: np.asarray(data[key]) for key in data.files}
  expected = _expected_shapes()
  _check_flat(flat, expected, path)
  return unflatten_params(flat)
