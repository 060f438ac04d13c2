"""Training: the run's typed configuration (`config`), the curriculum's stage table
(`curriculum`), the Keras callbacks (`callbacks`), resuming (`resume`) and the loop
that ties them to a model (`trainer`). No command-line parsing: `amych_tf.cli.train`
builds a `TrainConfig` from flags and calls `trainer.train`."""
