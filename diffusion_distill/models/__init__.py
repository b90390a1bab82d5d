"""Networks: the paper's U-Net, built from a config, and its parameters."""

import jax
import jax.numpy as jnp

from diffusion_distill import dataset_info
from diffusion_distill.models.unet import UNet
from diffusion_distill.models.unet import logsnr_to_time
from diffusion_distill.models.unet import timestep_embedding

__all__ = ['UNet', 'abstract_params', 'create_model', 'init_params',
           'logsnr_to_time', 'timestep_embedding', 'DTYPES']

# config.model.dtype -> the U-Net's compute dtype (parameters stay float32).
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def create_model(config):
  """The U-Net that config.model and config.dataset describe (a flax Module).

  The config is assumed checked (config_checks); 'both' predicts x and eps:
  x in the first C output channels, eps in the last C.
  """
  m = config.model
  info = dataset_info.get(config.dataset.name)
  out_ch = info.channels * (2 if m.mean_type == 'both' else 1)
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
      num_classes=dataset_info.num_model_classes(config.dataset),
      dtype=DTYPES[m.dtype])


def _dummy_inputs(config):
  info = dataset_info.get(config.dataset.name)
  return (jnp.zeros((1,) + info.image_shape), jnp.zeros((1,)),
          jnp.zeros((1,), jnp.int32))


def init_params(model, config, rng):
  """Freshly initialized U-Net parameters for `config` (host NumPy arrays)."""
  x, logsnr, y = _dummy_inputs(config)
  params = jax.jit(lambda r: model.init({'params': r}, x, logsnr, y,
                                        train=False)['params'])(rng)
  return jax.device_get(params)


def abstract_params(model, config):
  """Shapes and dtypes of the parameters, without allocating them."""
  x, logsnr, y = _dummy_inputs(config)
  return jax.eval_shape(
      lambda: model.init({'params': jax.random.PRNGKey(0)}, x, logsnr, y,
                         train=False)['params'])
