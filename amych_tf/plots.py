"""Figures of prototypes, reconstructions and results (matplotlib, no display needed).

Each function returns a matplotlib Figure; `figure_to_png` turns one into
PNG bytes for TensorBoard or files. Spectrograms are drawn with time on the
x axis and mel bins upwards, on the log-Mel scale's usual [0, 1] range.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

SPECTROGRAM_RANGE = (0.0, 1.0)


def figure_to_png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def panel_grid(count, columns, panel_size, **subplots_kwargs):
    """(figure, the first `count` axes) of a grid of `columns` panels per row; the rest hidden.

    panel_size: (width, height) of one panel in inches.
    """
    rows = -(-count // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(panel_size[0] * columns, panel_size[1] * rows),
                                squeeze=False, **subplots_kwargs)
    for axis in axes.flat[count:]:
        axis.axis("off")
    return figure, list(axes.flat[:count])


def prototype_gallery(prototypes, names=None, columns=8):
    """Every prototype P_k [F] as a spectrum curve, titled by its class (the paper's Figure 1)."""
    prototypes = np.asarray(prototypes)
    figure, axes = panel_grid(len(prototypes), columns, (2.0, 1.6), sharey=True)
    for k, axis in enumerate(axes):
        axis.plot(prototypes[k], np.arange(prototypes.shape[1]), color="tab:blue")
        axis.set_title(names[k] if names else f"prototype {k}", fontsize=7)
        axis.set_xlim(*SPECTROGRAM_RANGE)
        axis.tick_params(labelsize=6)
    figure.supylabel("mel bin", fontsize=8)
    figure.supxlabel("log-Mel level", fontsize=8)
    return figure


def spectrogram_gallery(spectrograms, names=None, columns=10):
    """Spectrograms [N, frames, mels] as images, titled by `names` (APNet's decoded prototypes)."""
    spectrograms = np.asarray(spectrograms)
    figure, axes = panel_grid(len(spectrograms), columns, (1.6, 1.5))
    for j, axis in enumerate(axes):
        axis.set_xticks([])
        axis.set_yticks([])
        axis.imshow(spectrograms[j].T, origin="lower", aspect="auto", vmin=SPECTROGRAM_RANGE[0],
                    vmax=SPECTROGRAM_RANGE[1])
        axis.set_title(names[j] if names else f"prototype {j}", fontsize=6)
    figure.supylabel("mel bin", fontsize=8)
    figure.supxlabel("frame", fontsize=8)
    return figure


def class_average_vs_prototype(class_means, prototypes, names, columns=8):
    """Each prototype [F] over the mean log-Mel spectrum [F] of its class (the paper's Figure 4)."""
    prototypes, class_means = np.asarray(prototypes), np.asarray(class_means)
    figure, axes = panel_grid(len(prototypes), columns, (2.0, 1.6), sharey=True)
    bins = np.arange(prototypes.shape[1])
    for k, axis in enumerate(axes):
        if np.all(np.isfinite(class_means[k])):
            axis.plot(class_means[k], bins, color="0.6", label="class average")
        axis.plot(prototypes[k], bins, color="tab:blue", label="prototype")
        axis.set_title(names[k], fontsize=7)
        axis.set_xlim(*SPECTROGRAM_RANGE)
        axis.tick_params(labelsize=6)
    axes[0].legend(fontsize=6, loc="lower right")
    figure.supylabel("mel bin", fontsize=8)
    figure.supxlabel("log-Mel level", fontsize=8)
    return figure


def stage_reconstructions(log_mel, stages, title=""):
    """One input and its reconstruction by the winning prototype after each curriculum stage (Figure 5).

    stages: list of (stage label, reconstruction [T, F], winning prototype [F], its name, L_rec).
    """
    rows = len(stages)
    figure, axes = plt.subplots(rows, 3, figsize=(9, 1.9 * rows), squeeze=False,
                                gridspec_kw={"width_ratios": [4, 4, 1]})
    for row, (label, reconstruction, prototype, name, error) in enumerate(stages):
        for axis, image, caption in ((axes[row, 0], log_mel, "input"),
                                     (axes[row, 1], reconstruction, f"{label}: {name}, L_rec {error:.4f}")):
            axis.imshow(np.asarray(image).T, origin="lower", aspect="auto", vmin=SPECTROGRAM_RANGE[0],
                        vmax=SPECTROGRAM_RANGE[1])
            axis.set_title(caption, fontsize=7)
            axis.set_xticks([])
            axis.set_yticks([])
        axes[row, 2].plot(prototype, np.arange(len(prototype)))
        axes[row, 2].set_xlim(*SPECTROGRAM_RANGE)
        axes[row, 2].set_title("prototype", fontsize=7)
        axes[row, 2].set_xticks(SPECTROGRAM_RANGE)
        axes[row, 2].tick_params(labelsize=5)
    figure.suptitle(title, fontsize=9)
    return figure


def reconstruction_panel(log_mel, reconstruction, prototype, title=""):
    """Input, reconstruction, squared error and the winning prototype for one clip."""
    figure, axes = plt.subplots(1, 4, figsize=(12, 3), gridspec_kw={"width_ratios": [4, 4, 4, 1]})
    error = (np.asarray(log_mel) - np.asarray(reconstruction)) ** 2
    for axis, image, label in zip(axes[:3], (log_mel, reconstruction, error), ("input", "reconstruction", "error")):
        limits = SPECTROGRAM_RANGE if label != "error" else (0.0, max(float(error.max()), 1e-6))
        axis.imshow(np.asarray(image).T, origin="lower", aspect="auto", vmin=limits[0], vmax=limits[1])
        axis.set_title(label, fontsize=8)
        axis.set_xlabel("frame", fontsize=7)
    axes[3].plot(prototype, np.arange(len(prototype)))
    axes[3].set_xlim(*SPECTROGRAM_RANGE)
    axes[3].set_title("prototype", fontsize=8)
    figure.suptitle(title, fontsize=9)
    return figure


def confusion_figure(counts, class_names=None, predicted_names=None):
    counts = np.asarray(counts)
    size = max(4.0, 0.25 * counts.shape[0])
    figure, axis = plt.subplots(figsize=(size, size))
    axis.imshow(counts, cmap="Blues")
    axis.set_xlabel("predicted", fontsize=8)
    axis.set_ylabel("true", fontsize=8)
    if class_names is not None and len(class_names) <= 40:
        axis.set_yticks(range(len(class_names)), class_names, fontsize=5)
        predicted_names = predicted_names or class_names
        axis.set_xticks(range(len(predicted_names)), predicted_names, fontsize=5, rotation=90)
    return figure


def assignment_histogram(counts, names=None):
    counts = np.asarray(counts)
    figure, axis = plt.subplots(figsize=(max(4.0, 0.2 * len(counts)), 2.5))
    axis.bar(np.arange(len(counts)), counts)
    axis.set_xlabel("prototype", fontsize=8)
    axis.set_ylabel("examples won", fontsize=8)
    if names is not None and len(names) <= 40:
        axis.set_xticks(range(len(names)), names, fontsize=5, rotation=90)
    return figure


def reconstruction_grid(log_mel, reconstructions, errors, names, winner):
    """An input and its reconstruction by every prototype with L_rec (the paper's Figure 6).

    log_mel [T, F]; reconstructions [K, T, F]; errors [K]; the winner's title is marked.
    """
    count = len(reconstructions) + 1
    figure, axes = panel_grid(count, min(count, 6), (2.2, 2.0))
    images = [(np.asarray(log_mel), "input")] + [
        (np.asarray(r), f"{'* ' if k == winner else ''}{names[k]}: {errors[k]:.4f}")
        for k, r in enumerate(reconstructions)]
    for axis, (image, title) in zip(axes, images):
        axis.imshow(image.T, origin="lower", aspect="auto", vmin=SPECTROGRAM_RANGE[0], vmax=SPECTROGRAM_RANGE[1])
        axis.set_title(title, fontsize=7)
        axis.set_xticks([])
        axis.set_yticks([])
    return figure


def transformation_curves(parameters, title=""):
    """Per-frame gain, pitch ratio and filter parameters of one prototype on one input."""
    names = ("gain", "pitch_ratio", "low_slope", "low_cutoff", "high_slope", "high_cutoff")
    figure, axes = plt.subplots(len(names), 1, figsize=(6, 1.3 * len(names)), sharex=True)
    for axis, name in zip(axes, names):
        axis.plot(np.asarray(parameters[name]))
        axis.set_ylabel(name, fontsize=7)
        axis.tick_params(labelsize=6)
    axes[-1].set_xlabel("frame", fontsize=8)
    figure.suptitle(title, fontsize=9)
    return figure
