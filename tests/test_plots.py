"""plots: the units the figures are labelled in, checked against hand computations and the transforms."""

import numpy as np
import pytest

from amych_tf import plots, transforms
from amych_tf.spectral import FeatureConfig, hz_to_mel

CONFIG = FeatureConfig(sample_rate=16000, n_fft=1024, hop_length=512, n_mels=128)


def test_gain_and_level_in_decibels():
    # log_mel = (log10(mel) + 10) / 17: a gain g multiplies the mel value by 10^(17 g).
    assert plots.gain_db(0.1, CONFIG) == pytest.approx(17.0)  # power: 10 dB per decade
    assert plots.gain_db(0.1, FeatureConfig(16000, 1024, 512, power=1.0)) == pytest.approx(34.0)  # magnitude
    assert plots.level_db(10.0 / 17.0, CONFIG) == pytest.approx(0.0)  # mel power 1
    assert plots.level_db((np.log10(100.0) + 10.0) / 17.0, CONFIG) == pytest.approx(20.0)  # mel power 100


def test_pitch_ratio_in_semitones():
    np.testing.assert_allclose(plots.semitones([2.0, 0.5, 2 ** (1 / 12)]), [12.0, -12.0, 1.0])


def test_cutoff_in_hz():
    # Cut-off 0 puts the hinge at u = 0.5, the middle of the uniform mel grid (fmin 0): half of mel(fmax),
    # i.e. 700 (sqrt(1 + fmax / 700) - 1) Hz.
    assert plots.cutoff_hz(0.0, CONFIG) == pytest.approx(700.0 * (np.sqrt(1.0 + 8000.0 / 700.0) - 1.0))
    # A hinge on bin i is that bin's centre frequency.
    i = np.array([10, 40, 100])
    np.testing.assert_allclose(plots.cutoff_hz(0.5 - i / 127, CONFIG), CONFIG.mel_frequencies()[i], rtol=1e-9)
    assert plots.bin_to_hz(plots.hz_to_bin(1000.0, CONFIG), CONFIG) == pytest.approx(1000.0)


@pytest.mark.parametrize("side, cutoff", [("low", -0.1), ("high", 0.1)])
def test_cutoff_and_slope_match_the_filters_straight_part(side, cutoff):
    slope = 0.2
    curve = getattr(transforms, f"{side}_filter_curve")(np.float32(slope), np.float32(cutoff), CONFIG.n_mels)
    bins = np.arange(CONFIG.n_mels)
    # The filtered side, 40 bins away from the hinge's rounding (< 0.02 bins there): a straight line in mel bins.
    hinge = plots.cutoff_bin(cutoff, CONFIG.n_mels)
    straight = bins < hinge - 40 if side == "low" else bins > hinge + 40
    per_bin, intercept = np.polyfit(bins[straight], np.asarray(curve)[straight], 1)
    assert -intercept / per_bin == pytest.approx(hinge, abs=0.05)  # the line meets zero at the hinge
    # Its steepness per octave at the cut-off frequency, in dB, growing away from the cut-off.
    hz = plots.cutoff_hz(cutoff, CONFIG)
    mel_step = CONFIG.mel_values()[1] - CONFIG.mel_values()[0]
    bins_per_octave = (hz_to_mel(hz * 2 ** 0.01) - hz_to_mel(hz * 2 ** -0.01)) / 0.02 / mel_step
    outward = -per_bin if side == "low" else per_bin
    expected = outward * bins_per_octave * 17 * 10
    # rel: the filter curve is float32.
    assert plots.slope_db_per_octave(slope, cutoff, CONFIG) == pytest.approx(expected, rel=1e-3)


def test_frame_times_are_frame_centres():
    np.testing.assert_allclose(plots.frame_times(3, CONFIG), (np.arange(3) * 512 + 512) / 16000)


def test_frequency_ticks_sit_on_their_bins():
    figure, axis = plots.plt.subplots()
    plots.label_frequency_axis(axis, CONFIG)
    labels = [label.get_text() for label in axis.get_yticklabels()]
    hz = [float(text[:-1]) * 1000 if text.endswith("k") else float(text) for text in labels]
    assert "1k" in labels and "5k" in labels
    np.testing.assert_allclose(plots.bin_to_hz(axis.get_yticks(), CONFIG), hz, rtol=1e-9)
    plots.plt.close(figure)
