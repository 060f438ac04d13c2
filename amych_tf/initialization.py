"""Prototype initialisation from training data, before `fit` (NOTES.md).

Unsupervised: k-means++ seeding over the time-averaged log-Mel spectra of up
to `max_examples` random training clips, plus N(0, noise) noise.
Supervised: prototype k starts as the mean time-averaged spectrum of class k
(plus the same noise); a class with no example in the sample falls back to
the overall mean. This is our choice: the paper does not say how supervised
prototypes start, and the class mean is the raw-stage optimum of eq. 9's
reconstruction term for a prototype without transformations.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def collect_mean_spectra(dataset: tf.data.Dataset, max_examples: int = 2000):
    """Time-averaged spectra [N, F] and labels [N] from batches of (features, labels).

    Averages only over frames whose mask is 1.
    """
    spectra, labels, seen = [], [], 0
    for features, batch_labels in dataset:
        log_mel = features["log_mel"].numpy()
        mask = features["mask"].numpy()[..., None]
        spectra.append((log_mel * mask).sum(1) / np.maximum(mask.sum(1), 1.0))
        labels.append(batch_labels.numpy())
        seen += log_mel.shape[0]
        if seen >= max_examples:
            break
    if not spectra:
        raise ValueError("no training examples to initialise the prototypes from")
    return np.concatenate(spectra)[:max_examples], np.concatenate(labels)[:max_examples]


def kmeans_plus_plus(points: np.ndarray, num_centres: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): [N, F] -> [num_centres, F].

    Each next centre is drawn with probability proportional to the squared
    distance to the nearest centre chosen so far. If there are fewer distinct
    points than centres, the remaining centres repeat points (the noise added
    by the caller separates them).
    """
    points = np.asarray(points, np.float64)
    centres = [points[rng.integers(len(points))]]
    closest = np.sum((points - centres[0]) ** 2, axis=1)
    for _ in range(1, num_centres):
        total = closest.sum()
        index = rng.choice(len(points), p=closest / total) if total > 0 else rng.integers(len(points))
        centres.append(points[index])
        closest = np.minimum(closest, np.sum((points - points[index]) ** 2, axis=1))
    return np.stack(centres)


def class_means(points: np.ndarray, labels: np.ndarray, num_prototypes: int) -> np.ndarray:
    """Mean of each class's points, [num_prototypes, F]; unseen classes get the overall mean."""
    points = np.asarray(points, np.float64)
    means = np.tile(points.mean(0), (num_prototypes, 1))
    for k in range(num_prototypes):
        members = points[labels == k]
        if len(members):
            means[k] = members.mean(0)
    return means


def initial_prototypes(points, labels, num_prototypes, mode, *, seed=0, noise=0.01) -> np.ndarray:
    """Prototype values [K, F] for `mode` ("supervised" or "unsupervised")."""
    rng = np.random.default_rng(seed)
    if mode == "supervised":
        centres = class_means(points, labels, num_prototypes)
    else:
        centres = kmeans_plus_plus(points, num_prototypes, rng)
    return (centres + rng.normal(0.0, noise, centres.shape)).astype(np.float32)


def initialise_prototypes(model, dataset, *, max_examples=2000, seed=0, noise=0.01) -> np.ndarray:
    """Set `model.prototypes` from `dataset` (batches of (features, labels)); returns the values."""
    points, labels = collect_mean_spectra(dataset, max_examples)
    values = initial_prototypes(points, labels, model.num_prototypes, model.mode, seed=seed, noise=noise)
    model.prototypes.assign(values)
    return values
