"""lineside.training: data sets, models, losses, metrics, training and evaluation (TensorFlow/Keras).

Importing this package (or ``training.cli``) does not import TensorFlow; every module
that needs it imports it inside the function that uses it, so ``lineside --help`` is fast.
Entry points: ``training.train.train`` and the ``synth``, ``train``, ``eval`` commands.
"""
