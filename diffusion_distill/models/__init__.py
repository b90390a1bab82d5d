"""Networks: the paper's U-Net, built from a config, and its parameters."""

import jax
import jax.numpy as jnp

from diffusion_distill import dataset_info
from diffusion_distill.models.unet import UNet
from diffusion_distill.models.unet import logsnr_to_time
from diffusion_distill.models.unet import timestep_embedding

__all__ = ['UNet', 'abstract_params', 'create_model', 'init_params',
           'logsnr_to_time', 'student_config', 'timestep_embedding',
           'DTYPES']

# config.model.dtype -> the U-Net's compute dtype (parameters stay float32).
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def create_model(config):
  """The U-Net that config.model and config.dataset describe (a flax Module).

  The config is assumed checked (config_checks); 'both' predicts x and eps:
  x in the first C output channels, eps in the last C.
  """
  m = config.model
  info = dataset_info.of(config)
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
      num_classes=dataset_info.num_model_classes(config),
      guidance_embedding=bool(m.get('guidance_embedding', False)),
      dtype=DTYPES[m.dtype])


def student_config(config, takes_guidance=False):
  """A distilled student's config: the teacher's architecture with dropout
  off (students train without it); with `takes_guidance`, the net also
  takes w (guided distillation's students)."""
  student = config.copy_and_resolve_references()
  student.model.dropout = 0.
  if takes_guidance:
    student.model.guidance_embedding = True
  return student


def _init(model, config, rng):
  info = dataset_info.of(config)
  x = jnp.zeros((1,) + info.image_shape)
  guidance = jnp.zeros((1,)) if model.guidance_embedding else None
  return model.init({'params': rng}, x, jnp.zeros((1,)),
                    jnp.zeros((1,), jnp.int32), train=False,
                    guidance=guidance)['params']


def init_params(model, config, rng):
  """Freshly initialized U-Net parameters for `config` (host NumPy arrays)."""
  return jax.device_get(jax.jit(lambda r: _init(model, config, r))(rng))


def abstract_params(model, config):
  """Shapes and dtypes of the parameters, without allocating them."""
  return jax.eval_shape(lambda: _init(model, config, jax.random.PRNGKey(0)))
