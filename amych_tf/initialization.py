"""Prototype initialisation from training data, before `fit`.

Both modes start from the time-averaged log-Mel spectra of training clips drawn
uniformly at random (without replacement, seeded) from the whole train split,
at most `max_examples` of them (the authors draw K + 2000 augmented crops
with replacement; README, "Hearing fidelity", says why we differ).

* Unsupervised: k-means++ seeding over the sample, plus N(0, noise) noise
  (as the authors).
* Supervised: prototype k starts at the *medoid* of class k's clips in the
  sample (the clip whose spectrum is nearest the class mean: the medoid under
  squared Euclidean distance), plus the same noise. A real clip keeps its
  harmonic lines; the class mean, our previous choice, averages notes of
  different pitches into a smooth envelope (a blur by construction), and the
  authors' k-means++ pick may come from another class. A class missing from
  the sample takes its medoid from all of its training clips.

The sample used to be drawn by shuffling *batches* of the class-sorted train
split, which on a 33-class SOL-like split left about 15 classes out.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def clip_mean_spectra(dataset: tf.data.Dataset):
    """Time-averaged spectra [N, F] and labels [N] of every clip of `dataset`.

    `dataset`: batches of (features with "log_mel" [B, T, F] and "mask" [B, T], labels);
    only frames whose mask is 1 are averaged.
    """
    spectra, labels = [], []
    for features, batch_labels in dataset:
        log_mel = features["log_mel"].numpy()
        mask = features["mask"].numpy()[..., None]
        spectra.append((log_mel * mask).sum(1) / np.maximum(mask.sum(1), 1.0))
        labels.append(batch_labels.numpy())
    if not spectra:
        raise ValueError("no training examples to initialise the prototypes from")
    return np.concatenate(spectra), np.concatenate(labels)


def uniform_sample(num_points: int, max_examples: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of min(num_points, max_examples) points drawn uniformly without replacement, sorted."""
    if num_points <= max_examples:
        return np.arange(num_points)
    return np.sort(rng.choice(num_points, size=max_examples, replace=False))


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


def medoid(points: np.ndarray) -> np.ndarray:
    """The point minimising the summed squared distance to the others: the one nearest their mean."""
    points = np.asarray(points, np.float64)
    return points[np.argmin(np.sum((points - points.mean(0)) ** 2, axis=1))]


def class_medoids(points, labels, num_prototypes, fallback_points=None, fallback_labels=None) -> np.ndarray:
    """Medoid of each class's points, [num_prototypes, F].

    A class absent from `points` takes the medoid of its `fallback_points`; a
    prototype beyond the classes (K > number of classes) or a class with no
    point anywhere takes the medoid of all points.
    """
    points, labels = np.asarray(points, np.float64), np.asarray(labels)
    centres = np.tile(medoid(points), (num_prototypes, 1))
    for k in range(num_prototypes):
        members = points[labels == k]
        if not len(members) and fallback_points is not None:
            members = np.asarray(fallback_points, np.float64)[np.asarray(fallback_labels) == k]
        if len(members):
            centres[k] = medoid(members)
    return centres


def initial_prototypes(points, labels, num_prototypes, mode, *, seed=0, noise=0.01, max_examples=2000) -> np.ndarray:
    """Prototype values [K, F] for `mode` from all training clips' mean spectra `points` [N, F]."""
    rng = np.random.default_rng(seed)
    points, labels = np.asarray(points, np.float64), np.asarray(labels)
    chosen = uniform_sample(len(points), max_examples, rng)
    if mode == "supervised":
        centres = class_medoids(points[chosen], labels[chosen], num_prototypes, points, labels)
    else:
        centres = kmeans_plus_plus(points[chosen], num_prototypes, rng)
    return (centres + rng.normal(0.0, noise, centres.shape)).astype(np.float32)


def initialise_prototypes(model, dataset, *, max_examples=2000, seed=0, noise=0.01) -> np.ndarray:
    """Set `model.prototypes` from `dataset` (every training clip, batches of (features, labels))."""
    points, labels = clip_mean_spectra(dataset)
    values = initial_prototypes(points, labels, model.num_prototypes, model.mode, seed=seed, noise=noise,
                                max_examples=max_examples)
    model.prototypes.assign(values)
    return values
