"""Figures of prototypes, reconstructions and results (matplotlib, no display needed).

Each function returns a matplotlib Figure; `figure_to_png` turns one into
PNG bytes for TensorBoard or files.

Spectrograms are drawn as a reader of the paper expects them: time in seconds
(frame centres) across, mel bins upwards with their frequencies in Hz as
ticks, the level in dB of each mel band's power (the log-Mel scaling undone),
and one colour scale per figure, taken from its input, with a colourbar. The
transformations are shown in the same units: gain in dB, pitch shift in
semitones, filter cut-offs in Hz and filter slopes in dB per octave.
"""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from amych_tf.spectral import LOG_OFFSET, LOG_RANGE, MEL_A, MEL_BREAK_HZ, hz_to_mel, mel_to_hz  # noqa: E402

DPI = 100
# Inches of one spectrogram panel: at DPI, 128 mel bins get over two pixels
# each, so neighbouring harmonics stay separate lines.
SPECTROGRAM_PANEL = (4.5, 3.2)
CURVE_HEIGHT = 1.5
HZ_TICKS = (100, 200, 500, 1000, 2000, 5000, 10000, 20000)
# Fewest mel bins between two Hz ticks, as a fraction of the bins: below about
# 700 Hz the mel scale is close to linear and 100, 200 would overlap.
MIN_TICK_GAP = 0.07
# Colour range below the input's loudest bin: the floor of the log-Mel scale
# (1e-10, -100 dB) would otherwise take most of the colours.
DYNAMIC_RANGE_DB = 90.0
COLOURMAP = "magma"
# The transformation parameters `winner_explanation` draws, as the model names them.
PARAMETER_NAMES = ("gain", "pitch_ratio", "low_cutoff", "low_slope", "high_cutoff", "high_slope")
WINNER_COLOUR = "tab:green"
MISSED_COLOUR = "tab:red"


def figure_to_png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


# -- units -------------------------------------------------------------------------------


def decibels_per_decade(config) -> float:
    """dB of a factor of 10 in a mel band: 10 for a power spectrogram (config.power 2), 20 for a magnitude."""
    return 10.0 if config.power == 2 else 20.0


def level_db(log_mel, config):
    """dB of the mel band value behind a log-Mel value v = (log10(mel + 1e-10) + 10) / 17."""
    return (np.asarray(log_mel, dtype=np.float64) * LOG_RANGE - LOG_OFFSET) * decibels_per_decade(config)


def gain_db(gain, config):
    """The gain g (eq. 1, added in log-Mel units) in dB: 17 g decades of the mel value."""
    return np.asarray(gain, dtype=np.float64) * LOG_RANGE * decibels_per_decade(config)


def semitones(pitch_ratio):
    """A frequency ratio in semitones, 12 log2(s)."""
    return 12.0 * np.log2(np.asarray(pitch_ratio, dtype=np.float64))


def mel_grid(config) -> tuple[float, float]:
    """(HTK mel value of bin 0, mel step between bins) of the uniform grid of `config.mel_values()`."""
    values = config.mel_values()
    return float(values[0]), float(values[1] - values[0])


def bin_to_hz(position, config):
    """Frequency in Hz of a (fractional) mel bin position; the grid is uniform in mel, so beyond it too."""
    first, step = mel_grid(config)
    return mel_to_hz(first + np.asarray(position, dtype=np.float64) * step)


def hz_to_bin(hz, config):
    """Inverse of `bin_to_hz`."""
    first, step = mel_grid(config)
    return (hz_to_mel(hz) - first) / step


def cutoff_bin(cutoff, num_bins: int):
    """Mel bin where a filter's hinge sits: softplus_10(+-2 (u - 0.5 + cutoff)) bends at u = 0.5 - cutoff,
    u = bin / (F - 1) (amych_tf.transforms)."""
    return (0.5 - np.asarray(cutoff, dtype=np.float64)) * (num_bins - 1)


def cutoff_hz(cutoff, config):
    """A filter's cut-off parameter as the frequency of its hinge, in Hz."""
    return bin_to_hz(cutoff_bin(cutoff, config.n_mels), config)


def slope_db_per_octave(slope, cutoff, config):
    """Level change of a filter's straight part per octave at its cut-off, away from the cut-off (dB).

    Both filters add 2 slope (log-Mel units) per unit of u = bin / (F - 1)
    going away from the hinge (down for the low filter, up for the high one),
    so > 0 boosts and < 0 cuts the filtered side. The filters are straight in
    mel, not in octaves: this is their steepness at the cut-off frequency.
    """
    _, step = mel_grid(config)
    mel_per_u = step * (config.n_mels - 1)
    hz = cutoff_hz(cutoff, config)
    mel_per_octave = MEL_A * math.log(2.0) / math.log(10.0) * hz / (MEL_BREAK_HZ + hz)
    return 2.0 * np.asarray(slope, dtype=np.float64) * mel_per_octave / mel_per_u * LOG_RANGE * \
        decibels_per_decade(config)


def frame_times(num_frames: int, config):
    """Centre of each frame in seconds (frames start every hop and are n_fft long, not centred)."""
    return (np.arange(num_frames) * config.hop_length + config.n_fft / 2) / config.sample_rate


def hz_label(hz: float) -> str:
    return f"{hz / 1000:g}k" if hz >= 1000 else f"{hz:g}"


def label_frequency_axis(axis, config, which: str = "y") -> None:
    """Ticks in Hz on an axis of mel bin positions (bins 0 .. F-1)."""
    top = config.n_mels - 1
    ticks, positions = [], []
    for hz in sorted(HZ_TICKS, reverse=True):  # from the top, where the mel scale spreads them
        position = float(hz_to_bin(hz, config))
        if 0 <= position <= top and (not positions or positions[-1] - position >= MIN_TICK_GAP * top):
            ticks.append(hz)
            positions.append(position)
    set_ticks, set_limits, set_label = ((axis.set_yticks, axis.set_ylim, axis.set_ylabel) if which == "y" else
                                        (axis.set_xticks, axis.set_xlim, axis.set_xlabel))
    set_ticks(positions, [hz_label(hz) for hz in ticks])
    set_limits(-0.5, top + 0.5)
    set_label("frequency (Hz)")


# -- spectrograms ------------------------------------------------------------------------


def level_limits(log_mel, config) -> tuple[float, float]:
    """One colour range (dB) for a figure: the input's loudest bin and DYNAMIC_RANGE_DB below it,
    raised to its quietest bin when that is closer."""
    levels = level_db(log_mel, config)
    top = float(levels.max())
    return max(float(levels.min()), top - DYNAMIC_RANGE_DB), top


def draw_spectrogram(axis, log_mel, config, limits, title: str = ""):
    """log_mel [T, F] as an image in dB, seconds across and Hz upwards; returns the image."""
    log_mel = np.asarray(log_mel)
    times = frame_times(log_mel.shape[0], config)
    half_hop = config.hop_length / config.sample_rate / 2
    image = axis.imshow(level_db(log_mel, config).T, origin="lower", aspect="auto", cmap=COLOURMAP,
                        vmin=limits[0], vmax=limits[1], interpolation="nearest",
                        extent=(times[0] - half_hop, times[-1] + half_hop, -0.5, log_mel.shape[1] - 0.5))
    label_frequency_axis(axis, config)
    axis.set_xlabel("time (s)")
    axis.set_title(title, fontsize=9)
    return image


def held(prototype, num_frames: int):
    """A prototype [F] repeated over `num_frames` frames: [T, F], the spectrogram it plays as."""
    return np.repeat(np.asarray(prototype)[None, :], num_frames, axis=0)


def level_colourbar(figure, image, **where):
    colourbar = figure.colorbar(image, **where)
    colourbar.set_label("mel band level (dB)")
    return colourbar


def label_outer_panels(axes, columns: int) -> None:
    """Axis labels and tick labels on the left column and on panels with no panel below (shared axes)."""
    for index, axis in enumerate(axes):
        axis.tick_params(labelleft=index % columns == 0, labelbottom=index + columns >= len(axes))
        if index % columns:
            axis.set_ylabel("")
        if index + columns < len(axes):
            axis.set_xlabel("")


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


# -- figures -----------------------------------------------------------------------------


def spectra_grid(curves, names, config, columns=3):
    """One panel per name: each of `curves` [(label, colour, spectra [N, F])] as level (dB) over
    frequency (Hz on the mel axis), one level scale for the figure. NaN spectra are left out."""
    count = len(names)
    columns = min(columns, count)
    figure, axes = panel_grid(count, columns, (4.5, 2.8), sharex=True, sharey=True, layout="constrained")
    bins = np.arange(config.n_mels)
    for k, axis in enumerate(axes):
        for label, colour, spectra in curves:
            if np.all(np.isfinite(spectra[k])):
                axis.plot(bins, level_db(spectra[k], config), color=colour, label=label)
        axis.set_title(names[k], fontsize=10)
        label_frequency_axis(axis, config, which="x")
        axis.set_ylabel("level (dB)")
        axis.grid(alpha=0.3)
    label_outer_panels(axes, columns)
    if len(curves) > 1:
        figure.legend(*axes[0].get_legend_handles_labels(), loc="outside upper center", ncols=len(curves))
    return figure


def prototype_gallery(prototypes, config, names=None, columns=3):
    """Every prototype P_k [F] as a spectrum, titled by its class (the paper's Figure 1)."""
    prototypes = np.asarray(prototypes)
    names = names or [f"prototype {k}" for k in range(len(prototypes))]
    return spectra_grid([("prototype", "tab:blue", prototypes)], names, config, columns)


def class_average_vs_prototype(class_means, prototypes, names, config, columns=3, without_cross_entropy=None):
    """Each prototype [F] with the mean log-Mel spectrum [F] of its class (the paper's Figure 4).

    without_cross_entropy: prototypes [K, F] learned before the cross-entropy
    joined the loss, drawn too, as the paper's middle column.
    """
    curves = [("class average", "0.55", np.asarray(class_means))]
    if without_cross_entropy is not None:
        curves.append(("prototype before the cross-entropy stage", "tab:orange", np.asarray(without_cross_entropy)))
    curves.append(("prototype", "tab:blue", np.asarray(prototypes)))
    return spectra_grid(curves, names, config, columns)


def spectrogram_gallery(spectrograms, config, names=None, columns=5):
    """Spectrograms [N, frames, mels], titled by `names`, one colour scale (APNet's decoded prototypes)."""
    spectrograms = np.asarray(spectrograms)
    figure, axes = panel_grid(len(spectrograms), min(columns, len(spectrograms)), (3.0, 2.4), sharex=True,
                              sharey=True, layout="constrained")
    limits = level_limits(spectrograms, config)
    for j, axis in enumerate(axes):
        image = draw_spectrogram(axis, spectrograms[j], config, limits, names[j] if names else f"prototype {j}")
    label_outer_panels(axes, min(columns, len(spectrograms)))
    level_colourbar(figure, image, ax=axes, shrink=0.6)
    return figure


def winner_explanation(log_mel, reconstruction, prototype, parameters, config, title=""):
    """How the winning prototype rebuilds one clip, for the reader of the paper's Figures 2, 3 and 5.

    Top: input | reconstruction | prototype held over the clip, one colour
    scale. Below each, sharing its time axis: gain (dB) and pitch shift
    (semitones); the low filter's cut-off (Hz) and slope (dB/octave); the high
    filter's. log_mel, reconstruction [T, F]; prototype [F]; parameters: the
    winner's gated gain, pitch_ratio, low_cutoff, low_slope, high_cutoff,
    high_slope, each [T].
    """
    log_mel = np.asarray(log_mel)
    parameters = {name: np.asarray(value, dtype=np.float64) for name, value in parameters.items()}
    width, height = SPECTROGRAM_PANEL
    figure = plt.figure(figsize=(3 * width + 0.6, height + 2 * CURVE_HEIGHT + 0.8), layout="constrained")
    grid = figure.add_gridspec(3, 4, width_ratios=[1, 1, 1, 0.05], height_ratios=[height, CURVE_HEIGHT, CURVE_HEIGHT])
    first = figure.add_subplot(grid[0, 0])
    spectrogram_axes = [first] + [figure.add_subplot(grid[0, c], sharex=first, sharey=first) for c in (1, 2)]
    limits = level_limits(log_mel, config)
    for axis, image, caption in zip(spectrogram_axes,
                                    (log_mel, reconstruction, held(prototype, len(log_mel))),
                                    ("input", "reconstruction by the winner", "winning prototype, held over the clip")):
        shown = draw_spectrogram(axis, image, config, limits, caption)
    for axis in spectrogram_axes[1:]:
        axis.set_ylabel("")
        axis.tick_params(labelleft=False)
    level_colourbar(figure, shown, cax=figure.add_subplot(grid[0, 3]))
    times = frame_times(len(log_mel), config)
    # (row, column, values, title, whether the values are mel bin positions shown in Hz like the spectrograms)
    curves = [
        (1, 0, gain_db(parameters["gain"], config), "gain (dB)", False),
        (2, 0, semitones(parameters["pitch_ratio"]), "pitch shift (semitones)", False),
    ]
    for column, side, filtered in ((1, "low", "below"), (2, "high", "above")):
        slope, cutoff = parameters[f"{side}_slope"], parameters[f"{side}_cutoff"]
        state = "" if np.any(slope != 0) else " (off)"
        curves += [(1, column, cutoff_bin(cutoff, config.n_mels), f"{side} filter cut-off (Hz){state}", True),
                   (2, column, slope_db_per_octave(slope, cutoff, config),
                    f"{side} filter slope (dB/octave, > 0 boosts {filtered}){state}", False)]
    for row, column, values, label, on_frequency_axis in curves:
        axis = figure.add_subplot(grid[row, column], sharex=first)
        axis.plot(times, values, color="tab:blue")
        axis.set_title(label, fontsize=9)
        if on_frequency_axis:
            label_frequency_axis(axis, config)
            axis.set_ylabel("")
        else:
            axis.axhline(0.0, color="0.6", linewidth=0.8)
            axis.margins(y=0.2)
        axis.grid(alpha=0.3)
        axis.tick_params(labelsize=8)
        if row == 2:
            axis.set_xlabel("time (s)")
        else:
            axis.tick_params(labelbottom=False)
    figure.suptitle(title, fontsize=11)
    return figure


def stage_reconstructions(log_mel, stages, config, title=""):
    """One input and its reconstruction by the winning prototype after each curriculum stage (Figure 5).

    One row per stage: input | reconstruction | that stage's winning prototype
    held over the clip, one colour scale for the figure (the input's).
    stages: list of (stage label, reconstruction [T, F], winning prototype [F], its name, L_rec).
    """
    log_mel = np.asarray(log_mel)
    width, height = SPECTROGRAM_PANEL
    figure, axes = plt.subplots(len(stages), 3, figsize=(3 * width + 0.6, height * len(stages)), squeeze=False,
                                sharex=True, sharey=True, layout="constrained")
    limits = level_limits(log_mel, config)
    for row, (label, reconstruction, prototype, name, error) in enumerate(stages):
        for axis, image, caption in ((axes[row, 0], log_mel, f"{label}: input"),
                                     (axes[row, 1], reconstruction, f"{label}: reconstruction, L_rec {error:.4f}"),
                                     (axes[row, 2], held(prototype, len(log_mel)), f"{label}: prototype {name}")):
            shown = draw_spectrogram(axis, image, config, limits, caption)
    label_outer_panels(list(axes.flat), 3)
    level_colourbar(figure, shown, ax=axes, shrink=0.5, aspect=40)
    figure.suptitle(title, fontsize=11)
    return figure


def reconstruction_grid(log_mel, reconstructions, errors, names, winner, config, title="", true_prototype=None):
    """An input and its reconstruction by every prototype with L_rec (the paper's Figure 6).

    log_mel [T, F]; reconstructions [K, T, F]; errors [K]; the winner gets a
    green frame, and the prototype of the input's class (`true_prototype`,
    when known) a red one if it did not win.
    """
    count = len(reconstructions) + 1
    columns = min(count, 3)
    figure, axes = panel_grid(count, columns, (4.0, 3.0), sharex=True, sharey=True, layout="constrained")
    limits = level_limits(log_mel, config)
    images = [(log_mel, "input")] + [(r, f"{names[k]}: L_rec {errors[k]:.4f}") for k, r in enumerate(reconstructions)]
    for axis, (image, caption) in zip(axes, images):
        shown = draw_spectrogram(axis, image, config, limits, caption)
    label_outer_panels(axes, columns)
    marks = [(winner, WINNER_COLOUR, "winner")]
    if true_prototype is not None and true_prototype != winner:
        marks.append((true_prototype, MISSED_COLOUR, "the input's class"))
    for k, colour, note in marks:
        for spine in axes[k + 1].spines.values():
            spine.set(edgecolor=colour, linewidth=4)
        axes[k + 1].set_title(f"{axes[k + 1].get_title()} ({note})", fontsize=9, color=colour)
    level_colourbar(figure, shown, ax=axes, shrink=0.5, aspect=40)
    figure.suptitle(title, fontsize=11)
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
