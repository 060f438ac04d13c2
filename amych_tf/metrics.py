"""The paper's metrics (section 4): OA, AA, L_rec, and the cluster -> class mapping.

Pure NumPy over predictions, so evaluation, training's final step and the
baselines share one definition.

- OA: fraction of examples whose predicted class is their label.
- AA: mean over classes (those present in the labels) of per-class accuracy.
- Supervised: prototype k predicts class k.
- Unsupervised: each prototype maps to the majority class of the *training*
  examples it wins; a prototype that wins no training example predicts no
  class (its test examples count as errors) and is reported.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """counts[true, predicted], [num_classes, num_classes]; predictions < 0 (no class) are not counted."""
    labels, predictions = np.asarray(labels, np.int64), np.asarray(predictions, np.int64)
    valid = predictions >= 0
    counts = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(counts, (labels[valid], predictions[valid]), 1)
    return counts


def overall_accuracy(labels, predictions) -> float:
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    return float(np.mean(labels == predictions)) if labels.size else float("nan")


def per_class_accuracy(labels, predictions, num_classes: int) -> np.ndarray:
    """Accuracy of each class, NaN for classes absent from `labels`."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    totals = np.bincount(labels, minlength=num_classes).astype(np.float64)
    hits = np.bincount(labels[labels == predictions], minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, hits / totals, np.nan)


def average_accuracy(labels, predictions, num_classes: int) -> float:
    return float(np.nanmean(per_class_accuracy(labels, predictions, num_classes)))


def majority_mapping(train_labels, train_winners, num_prototypes: int) -> np.ndarray:
    """Class of each prototype: the majority label of the training examples it wins, -1 if none.

    Ties go to the smallest class index.
    """
    train_labels, train_winners = np.asarray(train_labels, np.int64), np.asarray(train_winners, np.int64)
    num_classes = int(train_labels.max()) + 1 if train_labels.size else 0
    votes = np.zeros((num_prototypes, max(num_classes, 1)), np.int64)
    np.add.at(votes, (train_winners, train_labels), 1)
    return np.where(votes.sum(1) > 0, votes.argmax(1), -1)


def summarise(labels, winners, rec_of_winner, num_classes: int, mapping=None, class_names=None) -> dict:
    """OA, AA, mean L_rec of the winning prototype, per-class accuracy, confusion matrix.

    `mapping` [K] maps prototypes to classes (unsupervised); None means prototype k is class k.
    `rec_of_winner` None (models without a reconstruction error) gives "rec_error": None.
    """
    winners = np.asarray(winners, np.int64)
    predictions = winners if mapping is None else np.asarray(mapping)[winners]
    per_class = per_class_accuracy(labels, predictions, num_classes)
    names = class_names or [str(k) for k in range(num_classes)]
    result = {
        "num_examples": int(len(winners)),
        "overall_accuracy": overall_accuracy(labels, predictions),
        "average_accuracy": float(np.nanmean(per_class)) if len(winners) else float("nan"),
        "rec_error": None if rec_of_winner is None else float(np.mean(rec_of_winner)) if len(winners) else float("nan"),
        "per_class_accuracy": {n: (None if np.isnan(a) else float(a)) for n, a in zip(names, per_class)},
        "confusion_matrix": confusion_matrix(labels, predictions, num_classes).tolist(),
    }
    if mapping is not None:
        mapping = np.asarray(mapping)
        result["prototype_classes"] = mapping.tolist()
        result["unused_prototypes"] = np.flatnonzero(mapping < 0).tolist()
    return result
