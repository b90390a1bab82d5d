"""diffusion_distill: progressive distillation of diffusion models in JAX/Flax.

Install with the tested, pinned versions:

  pip install -c constraints.txt -e ".[test]"
"""

import setuptools

setuptools.setup(
    name='diffusion_distill',
    version='0.1.0',
    description=('Progressive distillation for fast sampling of diffusion '
                 'models (Salimans & Ho, ICLR 2022) in JAX/Flax'),
    packages=setuptools.find_packages(include=['diffusion_distill',
                                               'diffusion_distill.*']),
    package_data={'diffusion_distill.evaluation': ['digits_classifier.npz']},
    python_requires='>=3.10',
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
        'scikit-learn',  # the bundled offline digits data set
        'scipy',
        'tensorboard',
        'tensorflow-cpu',  # tf.data and TFDS only; JAX does the compute
        'tensorflow-datasets',
    ],
    extras_require={
        'test': ['pytest', 'pytest-xdist'],
    },
)
