"""diffusion_distill: progressive distillation of diffusion models in JAX/Flax.

Install with the tested, pinned versions (Python 3.11 or newer):

  pip install -c constraints.txt -e ".[test]"     # CPU, with the test tools
  pip install -c constraints.txt -e ".[cuda12]"   # NVIDIA GPU (CUDA 12)
  pip install -c constraints.txt -e ".[cuda13]"   # NVIDIA GPU (CUDA 13)
  pip install -c constraints.txt -e ".[tpu]"      # Cloud TPU VM

scripts/check_platforms.sh checks that these resolve for each platform.
"""

import setuptools

# TensorFlow serves tf.data and TFDS only; JAX does the compute. The small
# CPU-only build, tensorflow-cpu, has wheels for x86_64 Linux and Windows
# only; on the other platforms (aarch64 Linux, Apple silicon macOS) the full
# tensorflow package is the one with wheels. The second marker is the
# negation of the first (PEP 508 markers have no `not`).
_TF_CPU_MARKER = ('(sys_platform == "linux" and platform_machine == "x86_64")'
                  ' or (sys_platform == "win32" and platform_machine == "AMD64")')
_TF_FULL_MARKER = ('(sys_platform != "linux" or platform_machine != "x86_64")'
                   ' and (sys_platform != "win32" or platform_machine != "AMD64")')

setuptools.setup(
    name='diffusion_distill',
    version='0.1.0',
    license='Apache-2.0',
    description=('Progressive distillation for fast sampling of diffusion '
                 'models (Salimans & Ho, ICLR 2022) in JAX/Flax'),
    packages=setuptools.find_packages(include=['diffusion_distill',
                                               'diffusion_distill.*']),
    package_data={'diffusion_distill.evaluation': ['digits_classifier.npz']},
    # The pinned jax, jaxlib, numpy, scipy, flax and orbax-checkpoint all
    # need Python 3.11.
    python_requires='>=3.11',
    install_requires=[
        'absl-py',
        'clu',
        'etils[epath]',
        'flax',
        'matplotlib',  # the quality-vs-steps plot
        'jax',
        'ml_collections',
        'numpy',
        'optax',
        'orbax-checkpoint',
        'pillow',  # PNG writing
        'scikit-learn',  # the bundled offline digits data set
        'scipy',
        'tensorboard',
        'tensorflow-cpu; ' + _TF_CPU_MARKER,
        'tensorflow; ' + _TF_FULL_MARKER,
        'tensorflow-datasets',
    ],
    extras_require={
        'test': ['pytest', 'pytest-xdist'],
        # Accelerators, under JAX's own extra names: each brings the matching
        # jaxlib plugin and its runtime (the CUDA libraries, or libtpu).
        'cuda12': ['jax[cuda12]'],
        'cuda13': ['jax[cuda13]'],
        'tpu': ['jax[tpu]'],
    },
)
