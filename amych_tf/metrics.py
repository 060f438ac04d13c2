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


# ---------------------------------------------------------------------------
# Hearing fidelity: do reconstructions and prototypes keep the sound, not only its envelope?
#
# The fine structure of a log-Mel spectrum v [..., F] is what a moving average
# over SMOOTHING_BINS mel bins (edges reflected) leaves out, v~ = v - smooth(v):
# harmonic lines, formant edges, the comb of a note. Envelopes (what a blurred
# prototype still matches) have almost none.

SMOOTHING_BINS = 7
# Pitch tracking needs this many clips with a known note, on at least two notes, per prototype.
MIN_PITCH_CLIPS = 3


def smooth_spectrum(values, width: int = SMOOTHING_BINS) -> np.ndarray:
    """Moving average over the last axis (mel bins), `width` bins, edges reflected (not repeated)."""
    values = np.asarray(values, np.float64)
    half = width // 2
    padded = np.pad(values, [(0, 0)] * (values.ndim - 1) + [(half, half)], mode="reflect")
    return np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1).mean(-1)


def fine_structure(values, width: int = SMOOTHING_BINS) -> np.ndarray:
    """v - smooth(v): the spectral detail of `values` [..., F]."""
    values = np.asarray(values, np.float64)
    return values - smooth_spectrum(values, width)


class FineStructureExplained:
    """1 - sum (x~ - r~)^2 / sum x~^2 over the real frames of a split, accumulated batch by batch.

    x: inputs, r: the winner's reconstructions, both [B, T, F]; mask [B, T] marks real frames.
    1 means the reconstruction has every line of the input, 0 that it has none of them (a
    smooth envelope), below 0 that its detail is in the wrong places.
    """

    def __init__(self):
        self.residual = 0.0
        self.energy = 0.0

    def update(self, log_mel, reconstruction, mask) -> None:
        weights = np.asarray(mask, np.float64)[..., None]
        x_fine, r_fine = fine_structure(log_mel), fine_structure(reconstruction)
        self.residual += float(np.sum(weights * (x_fine - r_fine) ** 2))
        self.energy += float(np.sum(weights * x_fine**2))

    def result(self) -> float:
        return 1.0 - self.residual / self.energy if self.energy > 0 else float("nan")


class ClassAverageSpectra:
    """Average spectrum [F] of each class over the real frames of its clips (Fig. 4's left column)."""

    def __init__(self, num_classes: int, num_bins: int):
        self.sums = np.zeros((num_classes, num_bins))
        self.counts = np.zeros(num_classes)

    def update(self, log_mel, mask, labels) -> None:
        mask = np.asarray(mask, np.float64)
        np.add.at(self.sums, np.asarray(labels, np.int64), np.einsum("btf,bt->bf", np.asarray(log_mel, np.float64), mask))
        np.add.at(self.counts, np.asarray(labels, np.int64), mask.sum(1))

    def result(self) -> np.ndarray:
        """[C, F]; NaN rows for classes without frames."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sums / self.counts[:, None]


def _median_and_min(values: dict) -> tuple[float | None, float | None]:
    finite = [v for v in values.values() if v is not None and np.isfinite(v)]
    return (float(np.median(finite)), float(np.min(finite))) if finite else (None, None)


def prototype_crispness(prototypes, class_averages, prototype_classes, names=None) -> dict:
    """Spectral detail of each prototype relative to its class's average spectrum.

    crispness_k = sum (p_k - smooth(p_k))^2 / sum (a_c - smooth(a_c))^2, with a_c
    the average training spectrum of the class c of prototype k (supervised: k;
    unsupervised: its cluster's majority class). Above 1: the prototype is crisper
    than the plain average (the paper's Fig. 4); a blur scores well below 1.
    Prototypes without a class are left out.

    Returns {"median", "min", "per_prototype": {name: value}}.
    """
    prototypes, class_averages = np.asarray(prototypes, np.float64), np.asarray(class_averages, np.float64)
    names = names or [str(k) for k in range(len(prototypes))]
    detail = np.sum(fine_structure(prototypes) ** 2, axis=-1)
    average_detail = np.sum(fine_structure(class_averages) ** 2, axis=-1)
    per_prototype = {}
    for k, c in enumerate(np.asarray(prototype_classes, np.int64)):
        if 0 <= c < len(class_averages) and np.isfinite(average_detail[c]) and average_detail[c] > 0:
            per_prototype[names[k]] = float(detail[k] / average_detail[c])
    median, minimum = _median_and_min(per_prototype)
    return {"median": median, "min": minimum, "per_prototype": per_prototype}


def pitch_semitones(pitch_ratio, mask) -> np.ndarray:
    """12 log2 of each clip's median pitch ratio over its real frames: [B, T], [B, T] -> [B]."""
    pitch_ratio, mask = np.asarray(pitch_ratio, np.float64), np.asarray(mask) > 0
    return np.array([12.0 * np.log2(np.median(ratio[m])) for ratio, m in zip(pitch_ratio, mask)])


def pitch_tracking(winners, semitones, midi_notes, num_prototypes: int, names=None) -> dict:
    """Does the winner's pitch shift follow the note played?

    For each prototype, over the clips it wins whose note is known (midi >= 0):
    the Pearson r and the least-squares slope of the shift in semitones
    (`pitch_semitones`) against the MIDI note. A prototype that follows the
    played pitch has r near 1 and slope near 1 (one semitone of shift per
    semitone of note). Prototypes with fewer than MIN_PITCH_CLIPS such clips,
    a single note, or a constant shift (pitch stage off) get no value.

    Returns {"r_median", "slope_median", "clips_with_note", "per_prototype": {name: {r, slope, clips}}}.
    """
    winners, semitones = np.asarray(winners, np.int64), np.asarray(semitones, np.float64)
    midi_notes = np.asarray(midi_notes, np.float64)
    names = names or [str(k) for k in range(num_prototypes)]
    known = midi_notes >= 0
    per_prototype, rs, slopes = {}, [], []
    for k in range(num_prototypes):
        chosen = known & (winners == k)
        notes, shifts = midi_notes[chosen], semitones[chosen]
        if chosen.sum() < MIN_PITCH_CLIPS or np.ptp(notes) == 0 or np.ptp(shifts) == 0:
            continue
        notes_c, shifts_c = notes - notes.mean(), shifts - shifts.mean()
        r = float(np.sum(notes_c * shifts_c) / np.sqrt(np.sum(notes_c**2) * np.sum(shifts_c**2)))
        slope = float(np.sum(notes_c * shifts_c) / np.sum(notes_c**2))
        per_prototype[names[k]] = {"r": r, "slope": slope, "clips": int(chosen.sum())}
        rs.append(r)
        slopes.append(slope)
    return {
        "r_median": float(np.median(rs)) if rs else None,
        "slope_median": float(np.median(slopes)) if slopes else None,
        "clips_with_note": int(known.sum()),
        "per_prototype": per_prototype,
    }
