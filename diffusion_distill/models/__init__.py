"""Networks: the paper's U-Net and its construction from a config."""

import jax.numpy as jnp

from diffusion_distill import diffusion

from diffusion_distill.models.unet import UNet
from diffusion_distill.models.unet import logsnr_to_time
from diffusion_distill.models.unet import timestep_embedding

__all__ = ['UNet', 'create_model', 'logsnr_to_time', 'timestep_embedding']

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def create_model(config):
  """The U-Net that config.model and config.dataset describe (a flax Module)."""
  # Imported here so that the model stays usable without the data stack
  # (tf.data / tfds) installed, e.g. for sampling from a checkpoint.
  from diffusion_distill.input_pipeline import dataset_info

  m = config.model
  if m.dtype not in _DTYPES:
    raise ValueError(f'config.model.dtype={m.dtype!r}: use one of '
                     f'{sorted(_DTYPES)}.')
  if m.mean_type not in diffusion.MEAN_TYPES:
    raise ValueError(f'config.model.mean_type={m.mean_type!r}: use one of '
                     f'{diffusion.MEAN_TYPES}.')
  info = dataset_info(config.dataset.name)
  # 'both' predicts x and eps: x in the first C channels, eps in the last C.
  out_ch = info.channels * (2 if m.mean_type == 'both' else 1)
  num_classes = info.num_classes if config.dataset.class_conditional else 1
  return UNet(
      ch=m.ch,
      emb_ch=m.emb_ch,
      ch_mult=tuple(m.ch_mult),
      num_res_blocks=m.num_res_blocks,
      attn_resolutions=tuple(m.attn_resolutions),
      num_heads=m.num_heads,
      head_dim=m.head_dim,
      dropout=m.dropout,
      resblock_resample=m.resblock_resample,
      out_ch=out_ch,
      num_classes=num_classes,
      dtype=_DTYPES[m.dtype])
