"""The application built on the library: configuration, plan, runs, run directories and the command line.

``sidjax.run(config)`` trains a ``TrainConfig`` end to end (data on the
device, seeds together, checkpoints, resume, metrics) and returns what it
trained; ``sidjax.load_run(path)`` gives a run directory back; ``sidjax
train`` / ``sidjax compare`` are the command line generated from the config.
"""
