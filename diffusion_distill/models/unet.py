"""The U-Net of the paper (Improved DDPM with BigGAN-style residual resampling).

Module and parameter names are not free choices: they reproduce the tree of
the paper's released checkpoints, so those checkpoints load as they are
(tests/test_unet.py compares them with the trees in tests/reference). Names such as ``down_1.attn_0`` therefore
contain a dot on purpose.
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# The released checkpoints were trained with logSNR clipped to this range.
_LOGSNR_CLIP = 20.
# The sinusoidal embedding was designed for DDPM's integer steps in [0, 1000).
_EMBEDDING_TIME_SCALE = 1000.


def logsnr_to_time(logsnr):
  """Network time input for a logSNR: t = arctan(exp(-logsnr/2)) / (pi/2).

  This is the time at which the cosine schedule reaches ``logsnr`` (0.5 at
  logsnr 0, decreasing in logsnr), so the network sees the same input under
  any schedule; the clip keeps exp() finite and matches the paper's nets.
  """
  logsnr = jnp.clip(logsnr, -_LOGSNR_CLIP, _LOGSNR_CLIP)
  return jnp.arctan(jnp.exp(-0.5 * logsnr)) / (0.5 * np.pi)


def timestep_embedding(t, dim):
  """Transformer-style sinusoidal embedding of 1000 t: [sin, cos], dim features."""
  if dim < 4:
    raise ValueError(f'timestep_embedding: dim={dim} is too small; use dim >= 4.')
  half = dim // 2
  freqs = jnp.exp(-np.log(10000.) * jnp.arange(half, dtype=jnp.float32)
                  / (half - 1))
  args = (_EMBEDDING_TIME_SCALE * t.astype(jnp.float32))[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


# Guidance strengths w are embedded like times, as w / _GUIDANCE_SCALE: the
# range [0, 4] of Meng et al. then spans what t in [0, 1] spans.
_GUIDANCE_SCALE = 4.


def num_groups(channels):
  """GroupNorm groups for `channels`, or None where none work.

  Flax's default (32 groups) is what the released checkpoints used; it only
  fails for small toy widths, where one channel per group is the closest
  well-defined choice. A width of 32 or more must be a multiple of 32.
  """
  if channels < 32:
    return channels
  return 32 if channels % 32 == 0 else None


def group_norm_widths(ch, ch_mult, num_res_blocks):
  """Every channel count the U-Net normalizes (`UNet.__call__`'s data flow).

  The down path's blocks, the middle, the up path's blocks on
  concatenations of their input and a skip, and norm_out. config_checks
  uses it to reject widths that GroupNorm cannot divide before any work.
  """
  widths, h = set(), ch
  skips = [ch]
  for i, mult in enumerate(ch_mult):
    for _ in range(num_res_blocks):
      widths |= {h, ch * mult}
      h = ch * mult
      skips.append(h)
    if i != len(ch_mult) - 1:
      widths.add(h)
      skips.append(h)
  widths.add(h)
  for mult in reversed(ch_mult):
    for _ in range(num_res_blocks + 1):
      widths |= {h + skips.pop(), ch * mult}
      h = ch * mult
  return sorted(widths)


def _group_norm(channels, dtype, name):
  groups = num_groups(channels)
  if groups is None:
    raise ValueError(
        f'GroupNorm needs channel counts divisible by 32, got {channels}; '
        'choose ch (and ch * ch_mult, and their skip concatenations) as '
        'multiples of 32.')
  return nn.GroupNorm(num_groups=groups, epsilon=1e-6,
                      dtype=dtype, name=name)


def _downsample(x):
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


def _upsample(x):
  # Nearest neighbour, 2x in both spatial axes.
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class ResnetBlock(nn.Module):
  """Pre-activation residual block, with scale/shift conditioning on emb."""
  out_ch: int
  dropout: float
  resample: Optional[str] = None  # None, 'down' or 'up'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, emb, *, train: bool):
    in_ch = x.shape[-1]
    h = nn.swish(_group_norm(in_ch, self.dtype, 'norm1')(x))
    # BigGAN-style: resample after the first activation, and the skip path
    # too, so the block changes resolution without a strided conv.
    if self.resample == 'down':
      h, x = _downsample(h), _downsample(x)
    elif self.resample == 'up':
      h, x = _upsample(h), _upsample(x)
    elif self.resample is not None:
      raise ValueError(f'Unknown resample {self.resample!r}.')
    h = nn.Conv(self.out_ch, (3, 3), dtype=self.dtype, name='conv1')(h)

    emb_out = nn.Dense(2 * self.out_ch, dtype=self.dtype, name='temb_proj')(
        nn.swish(emb))
    scale, shift = jnp.split(emb_out[:, None, None, :], 2, axis=-1)
    h = _group_norm(self.out_ch, self.dtype, 'norm2')(h) * (1 + scale) + shift
    h = nn.swish(h)
    h = nn.Dropout(rate=self.dropout)(h, deterministic=not train)
    # Zero init makes every block start as the identity.
    h = nn.Conv(self.out_ch, (3, 3), kernel_init=nn.initializers.zeros,
                dtype=self.dtype, name='conv2')(h)

    if in_ch != self.out_ch:
      x = nn.Dense(self.out_ch, dtype=self.dtype, name='nin_shortcut')(x)
    return x + h


class AttnBlock(nn.Module):
  """Multi-head self-attention over the H*W positions, residual."""
  num_heads: Optional[int] = None
  head_dim: Optional[int] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    batch, height, width, channels = x.shape
    if self.head_dim is not None:
      if channels % self.head_dim:
        raise ValueError(f'head_dim={self.head_dim} does not divide the '
                         f'{channels} channels at resolution {height}.')
      heads, head_dim = channels // self.head_dim, self.head_dim
    elif self.num_heads is not None:
      if channels % self.num_heads:
        raise ValueError(f'num_heads={self.num_heads} does not divide the '
                         f'{channels} channels at resolution {height}.')
      heads, head_dim = self.num_heads, channels // self.num_heads
    else:
      raise ValueError('Set model.num_heads or model.head_dim.')

    h = _group_norm(channels, self.dtype, 'norm')(x)
    h = h.reshape(batch, height * width, channels)
    qkv = [nn.DenseGeneral((heads, head_dim), dtype=self.dtype, name=name)(h)
           for name in ('q', 'k', 'v')]
    # Logits and softmax are computed in float32 even for bfloat16 inputs.
    h = jax.nn.dot_product_attention(*qkv, scale=head_dim ** -0.5)
    h = nn.DenseGeneral(channels, axis=(-2, -1),
                        kernel_init=nn.initializers.zeros, dtype=self.dtype,
                        name='proj_out')(h)
    return x + h.reshape(batch, height, width, channels)


class UNet(nn.Module):
  """The paper's U-Net: (x [B,H,W,C], logsnr [B], y [B] | None) -> [B,H,W,out_ch].

  head_dim, when set, wins over num_heads (heads = channels // head_dim).
  num_classes == 1 means unconditional: no class embedding, y is ignored.
  With `guidance_embedding` the net also takes the guidance strength w [B]
  (`guidance=`): a sinusoidal embedding of w, through two dense layers, is
  added to the time embedding (docs/method.md, section 7). The last layer
  starts at zero, so a net initialised from a teacher first computes the
  teacher's conditional prediction. `guidance_scale`, given in training
  only, multiplies that embedding (stage 1's w warm-up).
  Parameters are float32; dtype is the compute dtype; the output is float32.
  """
  ch: int
  emb_ch: int
  ch_mult: Sequence[int]
  num_res_blocks: int
  attn_resolutions: Sequence[int]
  num_heads: Optional[int]
  head_dim: Optional[int]
  dropout: float
  resblock_resample: bool
  out_ch: int
  num_classes: int
  logsnr_input_type: str = 'inv_cos'
  guidance_embedding: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, logsnr, y, *, train: bool, guidance=None,
               guidance_scale=None):
    batch = x.shape[0]
    logsnr = jnp.asarray(logsnr, jnp.float32)
    if logsnr.ndim == 0:  # One noise level for the whole batch, as samplers use.
      logsnr = jnp.broadcast_to(logsnr, (batch,))
    if logsnr.shape != (batch,):
      raise ValueError(f'logsnr must have shape ({batch},), got {logsnr.shape}.')
    if self.logsnr_input_type != 'inv_cos':
      raise ValueError(f'Unknown logsnr_input_type {self.logsnr_input_type!r}; '
                       "only 'inv_cos' is implemented.")
    num_levels = len(self.ch_mult)
    if x.shape[1] % 2 ** (num_levels - 1) or x.shape[2] % 2 ** (num_levels - 1):
      raise ValueError(f'Image size {x.shape[1:3]} is not divisible by '
                       f'2**{num_levels - 1} (ch_mult={tuple(self.ch_mult)}).')

    emb = timestep_embedding(logsnr_to_time(logsnr), self.ch)
    emb = nn.Dense(self.emb_ch, dtype=self.dtype, name='dense0')(emb)
    emb = nn.Dense(self.emb_ch, dtype=self.dtype, name='dense1')(nn.swish(emb))
    if self.num_classes > 1:
      if y is None:
        raise ValueError('This U-Net is class-conditional: pass labels y.')
      emb = emb + nn.Dense(self.emb_ch, dtype=self.dtype, name='class_emb')(
          jax.nn.one_hot(y, self.num_classes, dtype=self.dtype))
    if self.guidance_embedding:
      w_emb = self._guidance_emb(guidance, batch)
      if guidance_scale is not None:
        w_emb = w_emb * jnp.asarray(guidance_scale, w_emb.dtype)
      emb = emb + w_emb

    def resnet(h, out_ch, name, resample=None):
      return ResnetBlock(out_ch, self.dropout, resample, dtype=self.dtype,
                         name=name)(h, emb, train=train)

    def attn(h, name):
      return AttnBlock(self.num_heads, self.head_dim, dtype=self.dtype,
                       name=name)(h)

    h = nn.Conv(self.ch, (3, 3), dtype=self.dtype, name='conv_in')(
        x.astype(self.dtype))
    skips = [h]
    for i, mult in enumerate(self.ch_mult):
      for j in range(self.num_res_blocks):
        h = resnet(h, self.ch * mult, f'down_{i}.block_{j}')
        if h.shape[1] in self.attn_resolutions:
          h = attn(h, f'down_{i}.attn_{j}')
        skips.append(h)
      if i != num_levels - 1:
        if self.resblock_resample:
          h = resnet(h, h.shape[-1], f'down_{i}.downsample', resample='down')
        else:
          h = _downsample(h)
        skips.append(h)

    h = resnet(h, h.shape[-1], 'mid.block_1')
    h = attn(h, 'mid.attn_1')
    h = resnet(h, h.shape[-1], 'mid.block_2')

    for i, mult in reversed(list(enumerate(self.ch_mult))):
      for j in range(self.num_res_blocks + 1):
        h = resnet(jnp.concatenate([h, skips.pop()], axis=-1), self.ch * mult,
                   f'up_{i}.block_{j}')
        if h.shape[1] in self.attn_resolutions:
          h = attn(h, f'up_{i}.attn_{j}')
      if i != 0:
        if self.resblock_resample:
          h = resnet(h, h.shape[-1], f'up_{i}.upsample', resample='up')
        else:
          h = _upsample(h)
    assert not skips, len(skips)

    h = nn.swish(_group_norm(h.shape[-1], self.dtype, 'norm_out')(h))
    # Zero init: a fresh model predicts 0 (the mean of x, eps and v alike).
    h = nn.Conv(self.out_ch, (3, 3), kernel_init=nn.initializers.zeros,
                dtype=self.dtype, name='conv_out')(h)
    return h.astype(jnp.float32)

  def _guidance_emb(self, guidance, batch):
    if guidance is None:
      raise ValueError('This U-Net is guidance-conditioned: pass guidance=w.')
    w = jnp.broadcast_to(jnp.asarray(guidance, jnp.float32), (batch,))
    emb = timestep_embedding(w / _GUIDANCE_SCALE, self.ch)
    emb = nn.Dense(self.emb_ch, dtype=self.dtype, name='w_dense0')(emb)
    return nn.Dense(self.emb_ch, kernel_init=nn.initializers.zeros,
                    dtype=self.dtype, name='w_dense1')(nn.swish(emb))
