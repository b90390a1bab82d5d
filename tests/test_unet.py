"""Tests of the U-Net: the paper's parameter trees, and behaviour on a tiny net."""

import functools
import json
import math
import os
import types
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from diffusion_distill import models
from diffusion_distill.models import unet

# The paper's three architectures (tests/reference/README.md).
_REFERENCE = {
    'cifar10': dict(
        kwargs=dict(ch=256, emb_ch=1024, ch_mult=(1, 1, 1),
                    attn_resolutions=(8, 16), num_heads=1, head_dim=None,
                    out_ch=3, num_classes=1),
        image_size=32, num_params=60_004_099),
    'imagenet64': dict(
        kwargs=dict(ch=192, emb_ch=768, ch_mult=(1, 2, 3, 4),
                    attn_resolutions=(8, 16, 32), num_heads=None, head_dim=64,
                    out_ch=6, num_classes=1000),
        image_size=64, num_params=295_905_222),
    'lsun128': dict(
        kwargs=dict(ch=64, emb_ch=768, ch_mult=(1, 2, 4, 6, 8),
                    attn_resolutions=(8, 16, 32), num_heads=None, head_dim=64,
                    out_ch=6, num_classes=1),
        image_size=128, num_params=139_578_502),
}


_REFERENCE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                              'reference')


def _load_reference(name):
  path = os.path.join(_REFERENCE_DIR, f'{name}_param_shapes.json')
  with open(path) as f:
    return {k: tuple(v) for k, v in json.load(f).items()}


def _param_shapes(model, image_size, channels=3):
  """Flattened 'a/b/leaf' -> shape of model's params, without allocating them."""
  variables = jax.eval_shape(
      functools.partial(model.init, train=False), jax.random.PRNGKey(0),
      jnp.zeros((1, image_size, image_size, channels)), jnp.zeros((1,)),
      jnp.zeros((1,), jnp.int32))
  flat = traverse_util.flatten_dict(variables['params'], sep='/')
  return {k: tuple(v.shape) for k, v in flat.items()}, variables


def _assert_same_tree(shapes, ref):
  assert sorted(set(ref) - set(shapes)) == [], 'missing from the model'
  assert sorted(set(shapes) - set(ref)) == [], 'not in the reference'
  wrong = {k: (shapes[k], ref[k]) for k in ref if shapes[k] != ref[k]}
  assert wrong == {}


@pytest.mark.parametrize('name', sorted(_REFERENCE))
def test_param_tree_matches_paper(name):
  ref = _load_reference(name)
  spec = _REFERENCE[name]
  model = models.UNet(num_res_blocks=3, dropout=0.1, resblock_resample=True,
                      **spec['kwargs'])
  shapes, variables = _param_shapes(model, spec['image_size'])
  assert set(variables) == {'params'}
  _assert_same_tree(shapes, ref)
  assert sum(math.prod(s) for s in shapes.values()) == spec['num_params']


def _base_config():
  configs_base = pytest.importorskip('configs.base')
  return configs_base.get_config()


def test_create_model_cifar10_and_imagenet64():
  config = _base_config()  # The CIFAR-10 architecture.
  shapes, _ = _param_shapes(models.create_model(config), 32)
  _assert_same_tree(shapes, _load_reference('cifar10'))

  config.dataset.name = 'imagenet64'
  config.dataset.class_conditional = True
  config.model.update(ch=192, emb_ch=768, ch_mult=(1, 2, 3, 4),
                      attn_resolutions=(8, 16, 32), head_dim=64,
                      mean_type='both', dtype='bfloat16')
  model = models.create_model(config)
  assert model.dtype == jnp.bfloat16
  shapes, variables = _param_shapes(model, 64)
  _assert_same_tree(shapes, _load_reference('imagenet64'))
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {
      jnp.dtype('float32')}


@pytest.mark.parametrize('ch,ch_mult,num_res_blocks', [
    (256, (1, 1, 1), 3), (192, (1, 2, 3, 4), 3), (64, (1, 2, 4, 6, 8), 3),
    (16, (1, 2), 1), (32, (1, 3), 2), (48, (1,), 1)])
def test_group_norm_widths_are_the_widths_the_unet_normalizes(
    ch, ch_mult, num_res_blocks):
  """group_norm_widths (what config checks use) against the GroupNorm
  scales of the built U-Net, without GroupNorm's divisibility check."""
  model = models.UNet(**dict(_TINY, ch=ch, ch_mult=ch_mult,
                             num_res_blocks=num_res_blocks,
                             attn_resolutions=(), num_heads=1))
  with mock.patch.object(unet, 'num_groups', lambda c: 1):
    shapes, _ = _param_shapes(model, 2 ** len(ch_mult) * 2)
  normalized = {s[0] for k, s in shapes.items()
                if k.split('/')[-2].startswith('norm') and
                k.endswith('/scale')}
  assert unet.group_norm_widths(ch, ch_mult, num_res_blocks) == sorted(
      normalized)


def test_logsnr_to_time():
  assert float(unet.logsnr_to_time(jnp.float32(0.))) == pytest.approx(0.5)
  t = np.asarray(unet.logsnr_to_time(jnp.linspace(-19.9, 19.9, 1001)))
  assert np.all(np.diff(t) < 0)
  assert np.all((t > 0) & (t < 1))
  # The inverse of the cosine schedule logsnr(t) = -2 log tan(pi t / 2).
  logsnr = np.linspace(-19.9, 19.9, 1001)
  np.testing.assert_allclose(t, np.arctan(np.exp(-logsnr / 2)) / (np.pi / 2),
                             rtol=1e-6, atol=1e-7)
  # Clipped to [-20, 20] like the paper's nets.
  np.testing.assert_array_equal(unet.logsnr_to_time(jnp.array([-30., 30.])),
                                unet.logsnr_to_time(jnp.array([-20., 20.])))


def test_timestep_embedding():
  t = jnp.array([0., 0.25, 1.])
  emb = np.asarray(unet.timestep_embedding(t, 16))
  assert emb.shape == (3, 16)
  # Lowest index: frequency 1 on 1000 t; highest: frequency 1/10000.
  np.testing.assert_allclose(emb[:, 0], np.sin(1000 * np.asarray(t)), atol=1e-4)
  np.testing.assert_allclose(emb[:, 8], np.cos(1000 * np.asarray(t)), atol=1e-4)
  np.testing.assert_allclose(emb[:, 7], np.sin(0.1 * np.asarray(t)), atol=1e-6)


_TINY = dict(ch=32, emb_ch=32, ch_mult=(1, 2), num_res_blocks=1,
             attn_resolutions=(4,), num_heads=None, head_dim=16, dropout=0.1,
             resblock_resample=True, out_ch=2, num_classes=10)


def _init_key():
  # XLA compiles a net's init several times faster with 'rbg' keys than with
  # threefry, which keeps this file fast on CPU.
  return jax.random.key(0, impl='rbg')


def _perturb(params, seed):
  # numpy, not jax.random: nothing to compile for ~160 leaves.
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda p: p + 0.1 * rng.standard_normal(p.shape, np.float32), params)


@pytest.fixture(scope='module')
def tiny():
  """A tiny class-conditional net, its fresh params and perturbed params."""
  model = models.UNet(**_TINY)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 1))
  logsnr = jnp.array([-3., 4.])
  y = jnp.array([3, 7])
  params = jax.jit(functools.partial(model.init, train=False))(
      _init_key(), x, logsnr, y)['params']
  # Fresh nets output exactly 0 (zero-init layers); perturb every leaf so
  # that each input has a path to the output.
  perturbed = _perturb(params, seed=2)
  apply = jax.jit(
      lambda p, x, logsnr, y, rng, train: model.apply(
          {'params': p}, x, logsnr, y, train=train, rngs={'dropout': rng}),
      static_argnames='train')
  return types.SimpleNamespace(model=model, x=x, logsnr=logsnr, y=y,
                               params=params, perturbed=perturbed, apply=apply)


def test_tiny_fresh_output_is_zero(tiny):
  out = tiny.apply(tiny.params, tiny.x, tiny.logsnr, tiny.y,
                   jax.random.PRNGKey(0), False)
  assert out.shape == (2, 8, 8, 2)
  assert out.dtype == jnp.float32
  np.testing.assert_array_equal(out, 0.)
  # Multi-head attention at resolution 4 (64 channels, head_dim 16).
  assert tiny.params['down_1.attn_0']['q']['kernel'].shape == (64, 4, 16)


def test_tiny_depends_on_logsnr_and_labels(tiny):
  rng = jax.random.PRNGKey(0)
  out = tiny.apply(tiny.perturbed, tiny.x, tiny.logsnr, tiny.y, rng, False)
  assert np.all(np.isfinite(out))
  assert np.abs(out).max() > 0
  other_logsnr = tiny.apply(tiny.perturbed, tiny.x, tiny.logsnr + 1., tiny.y,
                            rng, False)
  other_y = tiny.apply(tiny.perturbed, tiny.x, tiny.logsnr, tiny.y + 1, rng,
                       False)
  for other in (other_logsnr, other_y):
    # Every example changes.
    assert np.all(np.abs(np.asarray(out - other)).max(axis=(1, 2, 3)) > 1e-4)
  # A scalar logsnr means the same noise level for the whole batch.
  scalar = tiny.apply(tiny.perturbed, tiny.x, jnp.float32(-3.), tiny.y, rng,
                      False)
  np.testing.assert_allclose(scalar[0], out[0], rtol=1e-4, atol=1e-4)


def test_tiny_dropout_only_in_train(tiny):
  def run(seed, train):
    return np.asarray(tiny.apply(tiny.perturbed, tiny.x, tiny.logsnr, tiny.y,
                                 jax.random.PRNGKey(seed), train))
  assert not np.allclose(run(0, True), run(1, True))
  np.testing.assert_array_equal(run(0, True), run(0, True))
  np.testing.assert_array_equal(run(0, False), run(1, False))
  # Eval mode needs no dropout rng at all.
  out = jax.jit(functools.partial(tiny.model.apply, train=False))(
      {'params': tiny.perturbed}, tiny.x, tiny.logsnr, tiny.y)
  np.testing.assert_array_equal(out, run(0, False))


def test_tiny_bfloat16_compute(tiny):
  model = tiny.model.clone(dtype=jnp.bfloat16)
  out = jax.jit(functools.partial(model.apply, train=False))(
      {'params': tiny.perturbed}, tiny.x, tiny.logsnr, tiny.y)
  ref = tiny.apply(tiny.perturbed, tiny.x, tiny.logsnr, tiny.y,
                   jax.random.PRNGKey(0), False)
  assert out.dtype == jnp.float32
  assert np.abs(np.asarray(out - ref)).max() < 0.1 * np.abs(ref).max()


def test_unconditional_and_small_widths():
  # ch 16 < 32: one channel per group; the 32-channel skip concatenations
  # still use Flax's 32 groups. Unconditional nets ignore y.
  model = models.UNet(**dict(_TINY, ch=16, ch_mult=(1, 1), num_classes=1,
                             num_heads=2, head_dim=None,
                             resblock_resample=False))
  x = jnp.ones((1, 8, 8, 3))
  out, variables = jax.jit(
      functools.partial(model.init_with_output, y=None, train=False))(
          _init_key(), x, jnp.zeros((1,)))
  assert out.shape == (1, 8, 8, 2)
  assert 'class_emb' not in variables['params']
  assert not any('downsample' in k or 'upsample' in k
                 for k in variables['params'])


def test_widths_not_divisible_by_32_are_rejected():
  model = models.UNet(**dict(_TINY, ch=48))
  with pytest.raises(ValueError, match='divisible by 32'):
    _param_shapes(model, 8, channels=1)


def test_attention_matches_direct_computation():
  block = unet.AttnBlock(num_heads=2)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 32))
  params = _perturb(block.init(jax.random.PRNGKey(1), x)['params'], seed=3)
  out = np.asarray(block.apply({'params': params}, x))

  # Same computation written out in numpy, per head.
  xn = np.asarray(x, np.float64)
  groups = xn.reshape(2, 4, 4, 32, 1)  # 32 groups of one channel each.
  mean = groups.mean(axis=(1, 2, 4), keepdims=True)
  var = groups.var(axis=(1, 2, 4), keepdims=True)
  h = ((groups - mean) / np.sqrt(var + 1e-6)).reshape(2, 16, 32)
  h = h * np.asarray(params['norm']['scale']) + np.asarray(params['norm']['bias'])
  proj = {n: np.einsum('btc,chd->bthd', h, np.asarray(params[n]['kernel']))
             + np.asarray(params[n]['bias']) for n in 'qkv'}
  logits = np.einsum('bthd,bshd->bhts', proj['q'], proj['k']) / np.sqrt(16)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  attended = np.einsum('bhts,bshd->bthd', weights, proj['v'])
  expected = xn + (np.einsum('bthd,hdc->btc', attended,
                             np.asarray(params['proj_out']['kernel']))
                   + np.asarray(params['proj_out']['bias'])).reshape(2, 4, 4, 32)
  np.testing.assert_allclose(out, expected, atol=1e-4)


@pytest.mark.parametrize('resample,size', [(None, 8), ('down', 4), ('up', 16)])
def test_resnet_block_resampling(resample, size):
  block = unet.ResnetBlock(out_ch=64, dropout=0., resample=resample)
  x = jnp.ones((2, 8, 8, 32))
  emb = jnp.ones((2, 16))
  variables = block.init(jax.random.PRNGKey(0), x, emb, train=False)
  out = block.apply(variables, x, emb, train=False)
  assert out.shape == (2, size, size, 64)
  assert set(variables['params']) == {'norm1', 'conv1', 'temb_proj', 'norm2',
                                      'conv2', 'nin_shortcut'}
