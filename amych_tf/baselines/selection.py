"""How the baselines are trained long enough and selected: a CPU-time budget, and model
selection on validation accuracy (ties broken by validation loss), for the
clustering baselines after K-means.

The APNet paper (section 4.4) and its authors' training loop (dcase_models'
`KerasModelContainer.train` with its `AccuracyCallback`) keep the weights of best
validation accuracy and stop after a number of epochs without improvement;
`amych_tf.training` does this for every baseline. A model that only clusters has no
accuracy of its own: `ClusteringSelection` fits K-means on the train split's
embeddings after every epoch, maps each cluster to the majority class of its
training clips (as `amych_tf.evaluation` does) and scores the validation split.

`CPUBudget` makes a comparison fair in compute: training goes on until the
process has used a given CPU time (user + system of every thread, as the tables
report it), so a baseline gets at least what the model it is compared with got.
"""

from __future__ import annotations

import time

import keras
import numpy as np

CLUSTER_ACCURACY = "val_cluster_accuracy"


def embeddings_and_labels(model, dataset) -> tuple[np.ndarray, np.ndarray]:
    """`model.embed` of every clip of an evaluation dataset and the labels: ([N, D], [N])."""
    from amych_tf.evaluation import traced

    embed = traced(model, "embed", lambda m, features: m.embed(features))  # traced once per model, not per epoch
    embeddings, labels = [], []
    for features, batch_labels in dataset:
        embeddings.append(embed(features).numpy())
        labels.append(batch_labels.numpy())
    return np.concatenate(embeddings), np.concatenate(labels)


def cluster_accuracy(model, train_split, validation_split, seed: int = 0) -> float:
    """Fit the model's K-means on the train split, map clusters to majority classes, return validation OA.

    Leaves the fitted centres in the model (its `cluster_centres` weight).
    """
    from amych_tf import metrics

    train_embeddings, train_labels = embeddings_and_labels(model, train_split)
    train_clusters = model.fit_clusters(train_embeddings, seed=seed)
    mapping = metrics.majority_mapping(train_labels, train_clusters, model.num_prototypes)
    validation_embeddings, validation_labels = embeddings_and_labels(model, validation_split)
    centres = np.asarray(model.cluster_centres)
    nearest = ((validation_embeddings[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
    return metrics.overall_accuracy(validation_labels, mapping[nearest])


class ClusteringSelection(keras.callbacks.Callback):
    """After every epoch: K-means on the train split, validation OA after the majority mapping.

    Logs it as `val_cluster_accuracy` (callbacks after this one see it) and saves
    the weights, cluster centres included, to `path` when it beats every earlier
    epoch (ties keep the earlier epoch).
    """

    monitor = CLUSTER_ACCURACY

    def __init__(self, train_split, validation_split, path: str, seed: int = 0):
        super().__init__()
        self.train_split, self.validation_split = train_split, validation_split
        # `filepath`, as Keras' ModelCheckpoint: the training backup (amych_tf.training.resume) keeps a copy.
        self.filepath, self.seed = path, seed
        self.best = -np.inf
        self.best_epoch = None

    def on_epoch_end(self, epoch, logs=None):
        accuracy = cluster_accuracy(self.model, self.train_split, self.validation_split, self.seed)
        if logs is not None:
            logs[CLUSTER_ACCURACY] = accuracy
        if accuracy > self.best:
            self.best, self.best_epoch = accuracy, epoch + 1
            self.model.save_weights(self.filepath)


class CPUBudget(keras.callbacks.Callback):
    """Stop training at the end of the first epoch after which the process has used `seconds` of CPU time."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = float(seconds)
        self.epochs_run = 0

    def on_epoch_end(self, epoch, logs=None):
        self.epochs_run = epoch + 1
        if time.process_time() >= self.seconds:
            self.model.stop_training = True


class BestValidation(keras.callbacks.Callback):
    """Keep the weights of best validation accuracy; ties go to the lower validation loss.

    A small validation split saturates (the demo's 48 clips reach 100% within a
    few dozen epochs and stay there), and "earliest epoch on ties" then keeps a
    barely trained model; the validation loss still tells the tied epochs apart.
    An epoch replaces the kept one when its `monitor` is larger, or equal with a
    smaller `tie_breaker`. Saves the weights to `filepath` (the training backup,
    amych_tf.training.resume, keeps a copy) and records `best`, `best_tie_breaker`,
    `best_epoch` (1-based) and `epochs_run`.
    """

    def __init__(self, filepath: str, monitor: str = "val_accuracy", tie_breaker: str = "val_loss"):
        super().__init__()
        self.filepath, self.monitor, self.tie_breaker = filepath, monitor, tie_breaker
        self.best = -np.inf
        self.best_tie_breaker = np.inf
        self.best_epoch = None
        self.epochs_run = 0

    def on_epoch_end(self, epoch, logs=None):
        self.epochs_run = epoch + 1
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is None:  # no validation this epoch (--validation_freq)
            return
        value = float(value)
        tie_value = float(logs.get(self.tie_breaker, np.inf))
        if value > self.best or (value == self.best and tie_value < self.best_tie_breaker):
            self.best, self.best_tie_breaker, self.best_epoch = value, tie_value, epoch + 1
            self.model.save_weights(self.filepath)
