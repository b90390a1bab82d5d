"""What each stage reads of the config: the one list the wiring tests use.

For each stage (`STAGES`), every field of configs/base.py is in exactly one
of these (tests/test_wiring.py fails for a field in none, or in two):

  acts(stage)[field] = (component, other value[, base]): set alone to the
    other value, the field changes that component of the built stage (see
    tests/test_wiring.py: its compiled step, its parameters, its keys, its
    data, its loop, its sampler, or evaluation's rows, metric and reference
    statistics). `base`, {field: value}, changes the tiny base config first
    where the field acts only then (resampling needs two U-Net levels).
  inert(stage)[field] = (why, other value or UNCHECKED): the stage does not
    read it; set alone to the other value, nothing the stage computes
    changes. UNCHECKED: no other value can be tried here (the reason says
    why).
  refused(stage)[field] = other value: the field acts, but config_checks
    refuses that change alone for this stage (one error line).
  ONE_CHOICE: a field with one allowed value; there is nothing to change.

A field added to configs/base.py fails the tests until it is placed here for
every stage, with a test that shows it acts, or a reason why it does not.
"""

UNCHECKED = object()

STAGES = ('teacher', 'guide', 'distill', 'distill_guided', 'consistency',
          'eval')

ONE_CHOICE = ('schedule.name',)  # schedules.SCHEDULES has only 'cosine'.

# The U-Net's architecture: every training stage builds its networks from it.
_ARCHITECTURE = {
    'dataset.name': ('params', 'cifar10'),  # 32x32x3 images, another U-Net.
    'model.ch': ('params', 64),
    'model.emb_ch': ('params', 64),
    'model.ch_mult': ('params', (1, 2)),
    'model.num_res_blocks': ('params', 2),
    'model.attn_resolutions': ('params', (8,)),
    'model.num_heads': ('params', 2),
    'model.head_dim': ('params', 16),
    'model.resblock_resample': ('params', False, {'model.ch_mult': (1, 2)}),
    'model.mean_type': ('step', 'v'),
    'model.dtype': ('step', 'bfloat16'),
}
# What every training stage's loop reads.
_LOOP = {
    'seed': ('rng', 7),
    'dataset.shuffle_buffer': ('data', 16),
    'train.steps_per_dispatch': ('step', 2),
    'train.skip_nonfinite': ('step', False),
    'train.max_nonfinite_in_a_row': ('loop', 5),
    'train.log_every_steps': ('loop', 4),
    'train.checkpoint_every_steps': ('loop', 4),
    'train.num_grid_samples': ('loop', 8),
}
_NOT_DATA = {
    'stages': ('which stages run (train.py), not what one computes',
               ('teacher', 'distill', 'eval')),
    'dataset.data_dir': ('where TFDS finds the records: the same records '
                         'give the same batches (test_input_pipeline)',
                         UNCHECKED),
    'dataset.random_flip': ('digits are never mirrored (DatasetInfo.'
                            'allows_flip; config_checks refuses True); on '
                            'other data sets it flips (test_input_pipeline)',
                            UNCHECKED),
    'dataset.prefetch': ('how many batches tf.data prepares ahead: the same '
                         'batches', 5),
}
_TEACHER_TRAINING = {
    'train.batch_size': 'the teacher stage\'s batch',
    'train.num_steps': 'the teacher stage\'s length',
    'train.learning_rate': 'the teacher\'s optimizer',
    'train.warmup_steps': 'the teacher\'s learning rate',
    'train.decay_steps': 'the teacher\'s learning rate',
    'train.weight_decay': 'the teacher\'s optimizer',
    'train.ema_decay': 'the teacher\'s EMA',
    'train.grad_clip': 'the teacher\'s optimizer',
}
_TEACHER_TRAINING_VALUES = {
    'train.batch_size': 16, 'train.num_steps': 8, 'train.learning_rate': 3e-3,
    'train.warmup_steps': 4, 'train.decay_steps': 16,
    'train.weight_decay': 1e-3, 'train.ema_decay': 0.9, 'train.grad_clip': 0.5,
}
_ROUNDS = {
    'distill.start_num_steps': 'the rounds\' step counts',
    'distill.end_num_steps': 'the rounds\' step counts',
    'distill.steps_per_round': 'the rounds\' lengths',
    'distill.last_rounds_multiplier': 'the rounds\' lengths',
    'distill.long_rounds_max_steps': 'the rounds\' lengths',
    'distill.learning_rate': 'the rounds\' optimizer',
    'distill.batch_size': 'the rounds\' batch',
    'distill.loss_weighting': 'the rounds\' loss',
}
_ROUNDS_VALUES = {
    'distill.start_num_steps': 16, 'distill.end_num_steps': 2,
    'distill.steps_per_round': 8, 'distill.last_rounds_multiplier': 1,
    'distill.long_rounds_max_steps': 1, 'distill.learning_rate': 1e-3,
    'distill.batch_size': 16, 'distill.loss_weighting': 'snr',
}
_STAGE1 = {
    'guidance.num_steps': 'stage 1\'s length',
    'guidance.learning_rate': 'stage 1\'s optimizer',
    'guidance.learning_rate_schedule': 'stage 1\'s learning rate',
    'guidance.batch_size': 'stage 1\'s batch',
    'guidance.ema_decay': 'stage 1\'s EMA',
    'guidance.w_warmup_steps': 'stage 1\'s w-embedding',
}
_STAGE1_VALUES = {
    'guidance.num_steps': 8, 'guidance.learning_rate': 1e-3,
    'guidance.learning_rate_schedule': 'constant', 'guidance.batch_size': 16,
    'guidance.ema_decay': 0.5, 'guidance.w_warmup_steps': 10,
}
_CONSISTENCY = {
    'consistency.phases': 'the consistency phases\' step counts',
    'consistency.teacher_num_steps': 'the consistency phases\' teacher grid',
    'consistency.num_steps': 'the consistency phases\' lengths',
    'consistency.learning_rate': 'the consistency phases\' optimizer',
    'consistency.batch_size': 'the consistency phases\' batch',
    'consistency.target_decay': 'the consistency phases\' target network',
    'consistency.loss_weighting': 'the consistency phases\' loss',
}
_CONSISTENCY_VALUES = {
    'consistency.phases': (4, 1), 'consistency.teacher_num_steps': 16,
    'consistency.num_steps': 8, 'consistency.learning_rate': 1e-3,
    'consistency.batch_size': 16, 'consistency.target_decay': 0.25,
    'consistency.loss_weighting': 'snr',
}
_EVAL_VALUES = {
    'eval.num_samples': 32, 'eval.batch_size': 16, 'eval.num_reference': 100,
    'eval.sample_steps': (2, 8), 'eval.teacher_samplers': ('ancestral',),
    'eval.student_samplers': ('stochastic',),
    'eval.ancestral_noise_interp': 0.25, 'eval.num_seeds': 2,
    'eval.guidance': (0.5, 2.0), 'eval.inception_weights': '/nowhere.npz',
}


def _not_read(fields, values, where):
  return {f: (f'{why}, not {where}\'s', values[f])
          for f, why in fields.items()}


def _not_evaluation(where, guided=True):
  out = {f: (f'the evaluation\'s, not {where}\'s', v)
         for f, v in _EVAL_VALUES.items()}
  if not guided:  # config_checks refuses w > 0 without a null class.
    out['eval.guidance'] = (out['eval.guidance'][0], UNCHECKED)
  return out


def acts(stage):
  """{field: (component, other value)} of the fields `stage` reads."""
  if stage == 'teacher':
    return {
        **_ARCHITECTURE, **_LOOP,
        'dataset.class_conditional': ('params', False),
        'model.dropout': ('step', 0.1),
        'model.loss_weighting': ('step', 'snr'),
        'schedule.logsnr_min': ('step', -10.),
        'schedule.logsnr_max': ('step', 10.),
        **{f: ('step', v) for f, v in _TEACHER_TRAINING_VALUES.items()
           if f != 'train.num_steps'},
        'train.num_steps': ('loop', 8),
        'train.sample_every_steps': ('loop', 3),
        'train.grid_sample_steps': ('loop', 8),
        # The defect this list was written for: a guided teacher's loss
        # never saw the rate (0.1 and 0.2 compiled the same step).
        'guidance.label_dropout': ('step', 0.2,
                                   {'guidance.label_dropout': 0.1}),
    }
  if stage == 'guide':
    return {
        **_ARCHITECTURE, **_LOOP,
        'model.loss_weighting': ('step', 'snr'),
        'schedule.logsnr_min': ('step', -10.),
        'schedule.logsnr_max': ('step', 10.),
        'train.sample_every_steps': ('loop', 3),
        'train.grid_sample_steps': ('loop', 8),
        'distill.grad_clip': ('step', 0.5),
        'guidance.w_min': ('step', 0.5),
        'guidance.w_max': ('step', 2.0),
        'guidance.num_steps': ('loop', 8),
        **{f: ('step', v) for f, v in _STAGE1_VALUES.items()
           if f != 'guidance.num_steps'},
    }
  if stage in ('distill', 'distill_guided'):
    out = {
        **_ARCHITECTURE, **_LOOP,
        # Unset distill.loss_weighting: the rounds take the teacher's.
        'model.loss_weighting': ('step', 'snr'),
        'schedule.logsnr_min': ('step', -10.),
        'schedule.logsnr_max': ('step', 10.),
        'distill.grad_clip': ('step', 0.5),
        'distill.learning_rate': ('step', 1e-3),
        'distill.batch_size': ('step', 16),
        'distill.loss_weighting': ('step', 'snr'),
        **{f: ('loop', v) for f, v in _ROUNDS_VALUES.items()
           if f not in ('distill.learning_rate', 'distill.batch_size',
                        'distill.loss_weighting')},
    }
    if stage == 'distill':
      out['dataset.class_conditional'] = ('params', False)
      # A null class: one more class embedding (the teacher has it too).
      out['guidance.label_dropout'] = ('params', 0.2)
    else:
      out['guidance.w_min'] = ('step', 0.5)
      out['guidance.w_max'] = ('step', 2.0)
    return out
  if stage == 'consistency':
    return {
        **_ARCHITECTURE, **_LOOP,
        # Its base config has v output (x and eps are refused).
        'model.mean_type': ('step', 'both'),
        'dataset.class_conditional': ('params', False),
        # Unset consistency.loss_weighting: the phases take the teacher's.
        'model.loss_weighting': ('step', 'snr'),
        'schedule.logsnr_min': ('step', -10.),
        'schedule.logsnr_max': ('step', 10.),
        'distill.grad_clip': ('step', 0.5),
        **{f: ('step', v) for f, v in _CONSISTENCY_VALUES.items()
           if f in ('consistency.learning_rate', 'consistency.batch_size',
                    'consistency.target_decay',
                    'consistency.loss_weighting')},
        **{f: ('loop', v) for f, v in _CONSISTENCY_VALUES.items()
           if f in ('consistency.phases', 'consistency.teacher_num_steps',
                    'consistency.num_steps')},
    }
  if stage == 'eval':
    return {
        'seed': ('rows', 7),
        'dataset.name': ('metric', 'cifar10'),
        **{f: ('rows', v) for f, v in _EVAL_VALUES.items()
           if f not in ('eval.num_reference', 'eval.inception_weights')},
    }
  raise ValueError(stage)


def inert(stage):
  """{field: (why, other value or UNCHECKED)} of the fields `stage` does
  not read."""
  if stage == 'teacher':
    return {
        **_NOT_DATA,
        'distill.teacher_checkpoint': ('names the rounds\' teacher',
                                       '/elsewhere'),
        'distill.grad_clip': ('the rounds\' and stage 1\'s optimizer, not '
                              'the teacher\'s', 0.5),
        **_not_read(_ROUNDS, _ROUNDS_VALUES, 'the teacher'),
        'guidance.w_min': ('stage 1\'s and the rounds\' w', 0.5),
        'guidance.w_max': ('stage 1\'s and the rounds\' w', 2.0),
        **_not_read(_STAGE1, _STAGE1_VALUES, 'the teacher'),
        **_not_read(_CONSISTENCY, _CONSISTENCY_VALUES, 'the teacher'),
        **_not_evaluation('the teacher', guided=False),
    }
  if stage == 'guide':
    return {
        **_NOT_DATA,
        'model.dropout': ('the student trains without dropout '
                          '(models.student_config) and the teacher runs in '
                          'eval mode', 0.1),
        **_not_read(_TEACHER_TRAINING, _TEACHER_TRAINING_VALUES, 'stage 1'),
        'distill.teacher_checkpoint': ('chooses the teacher '
                                       '(teacher.resolve, test_guidance); '
                                       'the stage is built from the one '
                                       'resolved', UNCHECKED),
        **_not_read(_ROUNDS, _ROUNDS_VALUES, 'stage 1'),
        **_not_read(_CONSISTENCY, _CONSISTENCY_VALUES, 'stage 1'),
        'guidance.label_dropout': ('the teacher\'s rate: stage 1 reads only '
                                   'that there is a null class', 0.3),
        **_not_evaluation('stage 1'),
    }
  if stage in ('distill', 'distill_guided'):
    out = {
        **_NOT_DATA,
        'model.dropout': ('students train without dropout '
                          '(models.student_config) and the teacher runs in '
                          'eval mode', 0.1),
        **_not_read(_TEACHER_TRAINING, _TEACHER_TRAINING_VALUES,
                    'the rounds'),
        'train.sample_every_steps': ('each round draws its grid at its end',
                                     3),
        'train.grid_sample_steps': ('a round\'s grid uses the student\'s own '
                                    'step count', 8),
        'distill.teacher_checkpoint': ('chooses the teacher '
                                       '(teacher.resolve, test_distill); '
                                       'the rounds are built from the one '
                                       'resolved', UNCHECKED),
        **_not_read(_STAGE1, _STAGE1_VALUES, 'the rounds'),
        **_not_read(_CONSISTENCY, _CONSISTENCY_VALUES, 'the rounds'),
        **_not_evaluation('the rounds', guided=stage == 'distill_guided'),
    }
    if stage == 'distill':
      out['guidance.w_min'] = ('the students of an unguided teacher take no '
                               'w', 0.5)
      out['guidance.w_max'] = ('the students of an unguided teacher take no '
                               'w', 2.0)
    else:
      out['guidance.label_dropout'] = ('the teacher\'s rate: the rounds read '
                                       'only that there is a null class',
                                       0.3)
    return out
  if stage == 'consistency':
    return {
        **_NOT_DATA,
        'model.dropout': ('students train without dropout '
                          '(models.student_config) and the teacher runs in '
                          'eval mode', 0.1),
        **_not_read(_TEACHER_TRAINING, _TEACHER_TRAINING_VALUES,
                    'the consistency phases'),
        'train.sample_every_steps': ('each phase draws its grid at its end',
                                     3),
        'train.grid_sample_steps': ('a phase\'s grid uses the student\'s own '
                                    'step count', 8),
        'distill.teacher_checkpoint': ('chooses the teacher '
                                       '(teacher.resolve, '
                                       'test_consistency_stage); the phases '
                                       'are built from the one resolved',
                                       UNCHECKED),
        **_not_read(_ROUNDS, _ROUNDS_VALUES, 'the consistency phases'),
        **_not_read(_STAGE1, _STAGE1_VALUES, 'the consistency phases'),
        'guidance.w_min': ('the students of an unguided teacher take no w',
                           0.5),
        'guidance.w_max': ('the students of an unguided teacher take no w',
                           2.0),
        **_not_evaluation('the consistency phases', guided=False),
    }
  if stage == 'eval':
    checkpoint = ('each model is built from the config its checkpoint '
                  'recorded')
    return {
        **_NOT_DATA,
        'dataset.shuffle_buffer': ('the digits reference statistics are all '
                                   '1,797 images, in file order', 16),
        **{f: (checkpoint, v) for f, (_, v, *_) in _ARCHITECTURE.items()
           if f != 'dataset.name'},
        'model.dropout': (checkpoint, 0.1),
        'model.loss_weighting': ('a training loss\'s', 'snr'),
        'schedule.logsnr_min': (checkpoint, -10.),
        'schedule.logsnr_max': (checkpoint, 10.),
        **{f: ('the training stages\' loop', v)
           for f, (_, v) in _LOOP.items() if f.startswith('train.')},
        **{f: (f'{why}, not the evaluation\'s', _TEACHER_TRAINING_VALUES[f])
           for f, why in _TEACHER_TRAINING.items()},
        'train.sample_every_steps': ('the training stages\' grids', 4),
        'train.grid_sample_steps': ('the training stages\' grids', 8),
        'distill.teacher_checkpoint': ('chooses the teacher '
                                       '(teacher.resolve); evaluation is '
                                       'built from the one resolved',
                                       UNCHECKED),
        'distill.grad_clip': ('the training stages\' optimizer', 0.5),
        **_not_read(_ROUNDS, _ROUNDS_VALUES, 'the evaluation'),
        'guidance.label_dropout': ('only that there is a null class: the '
                                   'guided rows', 0.3),
        'guidance.w_min': ('the students\' range comes from their '
                           'checkpoints', 0.25),
        'guidance.w_max': ('the students\' range comes from their '
                           'checkpoints', 2.0),
        **_not_read(_STAGE1, _STAGE1_VALUES, 'the evaluation'),
        **_not_read(_CONSISTENCY, _CONSISTENCY_VALUES, 'the evaluation'),
        'eval.num_reference': ('the digits reference statistics are all '
                               '1,797 images; other data sets read this '
                               'many', 100),
        'eval.inception_weights': ('digits are measured with the bundled '
                                   'digits classifier, not Inception',
                                   '/nowhere.npz'),
    }
  raise ValueError(stage)


def refused(stage):
  """{field: other value} that config_checks refuses alone for `stage`."""
  out = {'model.guidance_embedding': True}  # Set by the guided stages.
  # They describe an image folder (dataset.name='image_folder'), not digits;
  # tests/test_image_folder.py shows each reaching the data and the U-Net.
  out.update({'dataset.path': '/images', 'dataset.image_size': 16,
              'dataset.channels': 1, 'dataset.num_classes': 3})
  if stage in ('guide', 'distill_guided', 'eval'):
    # Guidance needs labels.
    out['dataset.class_conditional'] = False
  if stage == 'consistency':
    # It distils an unguided teacher only.
    out['guidance.label_dropout'] = 0.1
  return out
