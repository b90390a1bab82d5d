"""Converts the FID Inception-v3 weights to this project's .npz.

Source: `classify_image_graph_def.pb` inside
http://download.tensorflow.org/models/image/imagenet/inception-2015-12-05.tgz
(the graph the original FID code, TTUR, and the Inception Score code,
improved-GAN, run). Download and extract it on a machine with internet, then:

  python scripts/convert_inception_weights.py \
      --graph_def=classify_image_graph_def.pb \
      --output=~/.cache/diffusion_distill/fid_inception_v3.npz

`diffusion_distill.evaluation.inception.load_inception_params()` reads that
default path (or $DIFFUSION_DISTILL_INCEPTION_WEIGHTS).

The file is parsed as a TF GraphDef protobuf (no pickle, no TF graph is
executed) in three steps:

(a) `read_graph_constants`: every `Const` node -> {node name: ndarray}
    (`tf.make_ndarray`), plus the attributes of the graph's
    `BatchNormWithGlobalNormalization` nodes.
(b) `inception.tf_weights_to_params`: pure renaming into the Flax tree.
(c) `inception.save_inception_params`: the .npz ('a/b/c' keys, float32).

Constant names expected (94 convolutions + the classifier, 472 arrays):

  <conv>/conv2d_params                  [kh, kw, in, out]
  <conv>/batchnorm/beta                 [out]
  <conv>/batchnorm/gamma                [out]
  <conv>/batchnorm/moving_mean          [out]
  <conv>/batchnorm/moving_variance      [out]
  softmax/weights                       [2048, 1008]
  softmax/biases                        [1008]

with <conv> one of
  conv, conv_1, conv_2, conv_3, conv_4                         (stem)
  mixed{,_1,_2}/conv, .../tower/conv{,_1},
      .../tower_1/conv{,_1,_2}, .../tower_2/conv                (35x35)
  mixed_3/conv, mixed_3/tower/conv{,_1,_2}                      (reduction)
  mixed_{4..7}/conv, .../tower/conv{,_1,_2},
      .../tower_1/conv{,_1,_2,_3,_4}, .../tower_2/conv          (17x17)
  mixed_8/tower/conv{,_1}, mixed_8/tower_1/conv{,_1,_2,_3}      (reduction)
  mixed_{9,10}/conv, .../tower/conv, .../tower/mixed/conv{,_1},
      .../tower_1/conv{,_1}, .../tower_1/mixed/conv{,_1},
      .../tower_2/conv                                          (8x8)

Batch norm: the graph's `BatchNormWithGlobalNormalization` ops carry
`variance_epsilon` (the network uses 0.001; another value stops the
conversion) and `scale_after_normalization`; where that is false TF ignores
gamma, so the converter stores ones for that layer's gamma.

Honesty note: the real .pb is not available where this was written. The
names above come from public descriptions of the graph; what the tests check
is that step (b) inverts `inception.params_to_tf_weights` exactly (a round
trip over a synthetic dict with these names and the network's shapes) and
that step (a) reads Const nodes and BN attributes from a small synthetic
GraphDef. Shapes are checked against the network on every conversion, so a
name or shape mismatch with the real file fails loudly, not silently. After
converting the real file, compare a few FIDs with TTUR's before trusting it.
"""

import argparse
import os
import sys
from typing import Dict, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffusion_distill.evaluation import inception  # pylint: disable=g-import-not-at-top,wrong-import-position

_BATCHNORM_OP = 'BatchNormWithGlobalNormalization'


def read_graph_constants(
    path: str) -> Tuple[Dict[str, np.ndarray], Dict[str, Dict[str, object]]]:
  """(a) GraphDef file -> ({Const name: array}, {BN scope: attributes}).

  BN scope is the batch norm node's name, e.g. 'mixed/conv/batchnorm'.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  graph_def = tf.compat.v1.GraphDef()
  with tf.io.gfile.GFile(path, 'rb') as f:
    graph_def.ParseFromString(f.read())
  constants, batchnorms = {}, {}
  for node in graph_def.node:
    if node.op == 'Const':
      constants[node.name] = tf.make_ndarray(node.attr['value'].tensor)
    elif node.op == _BATCHNORM_OP:
      attrs = {}
      if 'variance_epsilon' in node.attr:
        attrs['variance_epsilon'] = node.attr['variance_epsilon'].f
      if 'scale_after_normalization' in node.attr:
        attrs['scale_after_normalization'] = (
            node.attr['scale_after_normalization'].b)
      batchnorms[node.name] = attrs
  return constants, batchnorms


def apply_batchnorm_attributes(
    constants: Dict[str, np.ndarray],
    batchnorms: Dict[str, Dict[str, object]]) -> Dict[str, np.ndarray]:
  """Folds the BN ops' attributes into the constants the network reads."""
  constants = dict(constants)
  for scope, attrs in batchnorms.items():
    epsilon = attrs.get('variance_epsilon')
    if epsilon is not None and not np.isclose(
        epsilon, inception.BATCHNORM_EPSILON, rtol=1e-4):
      raise ValueError(f'{scope} uses variance_epsilon={epsilon}; the network '
                       f'is built with {inception.BATCHNORM_EPSILON}.')
    gamma_name = f'{scope}/gamma'
    if (attrs.get('scale_after_normalization') is False and
        gamma_name in constants):
      constants[gamma_name] = np.ones_like(constants[gamma_name])
  return constants


def convert(graph_def_path: str, output_path: str) -> None:
  constants, batchnorms = read_graph_constants(graph_def_path)
  constants = apply_batchnorm_attributes(constants, batchnorms)
  params = inception.tf_weights_to_params(constants)          # (b)
  inception.save_inception_params(output_path, params)        # (c)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--graph_def', required=True,
                      help='path of classify_image_graph_def.pb')
  parser.add_argument('--output', default=inception.default_weights_path(),
                      help='where to write the .npz (default: %(default)s)')
  args = parser.parse_args(argv)
  graph_def = os.path.expanduser(args.graph_def)
  if not os.path.exists(graph_def):
    parser.exit(2, f'error: {graph_def} does not exist; extract '
                   f'classify_image_graph_def.pb from '
                   f'inception-2015-12-05.tgz first.\n')
  output = os.path.expanduser(args.output)
  convert(graph_def, output)
  print(f'Wrote {output}')


if __name__ == '__main__':
  main()
