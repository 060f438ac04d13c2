"""Hearing fidelity: the metrics of amych_tf.metrics against independent NumPy/SciPy computations,
the model's winner explanation, and evaluate's fidelity summary."""

import numpy as np
import pytest
import scipy.ndimage
import scipy.stats
import tensorflow as tf

from amych_tf import data, evaluation, metrics
from helpers import FEATURES, make_prepared_dir, write_model_dir


def reference_fine(values):
    """v - 7-bin moving average, edges mirrored without repeating the edge bin (SciPy's 'mirror')."""
    values = np.asarray(values, np.float64)
    return values - scipy.ndimage.uniform_filter1d(values, size=7, axis=-1, mode="mirror")


def test_smoothing_is_a_seven_bin_moving_average_with_reflected_edges():
    values = np.random.default_rng(0).random((3, 5, 40))
    np.testing.assert_allclose(metrics.smooth_spectrum(values),
                               scipy.ndimage.uniform_filter1d(values, size=7, axis=-1, mode="mirror"), atol=1e-12)
    np.testing.assert_allclose(metrics.fine_structure(values), reference_fine(values), atol=1e-12)
    line = np.linspace(0.0, 1.0, 40)  # an envelope has no fine structure away from the edges
    assert np.abs(metrics.fine_structure(line)[3:-3]).max() < 1e-12


def test_fine_structure_explained_over_batches_with_masks():
    rng = np.random.default_rng(1)
    inputs = rng.random((2, 4, 6, 32))  # two batches of [4 clips, 6 frames, 32 bins]
    reconstructions = inputs + 0.3 * rng.normal(size=inputs.shape)
    masks = (rng.random((2, 4, 6)) > 0.3).astype(np.float32)
    score = metrics.FineStructureExplained()
    for x, r, m in zip(inputs, reconstructions, masks):
        score.update(x, r, m)
    real = masks.astype(bool)
    x_fine, r_fine = reference_fine(inputs[real]), reference_fine(reconstructions[real])
    expected = 1.0 - np.sum((x_fine - r_fine) ** 2) / np.sum(x_fine**2)
    assert score.result() == pytest.approx(expected, rel=1e-10)

    perfect, envelope = metrics.FineStructureExplained(), metrics.FineStructureExplained()
    perfect.update(inputs[0], inputs[0], masks[0])
    envelope.update(inputs[0], scipy.ndimage.uniform_filter1d(inputs[0], 31, axis=-1, mode="mirror"), masks[0])
    assert perfect.result() == 1.0
    assert abs(envelope.result()) < 0.1  # a smooth envelope explains (almost) none of it
    assert np.isnan(metrics.FineStructureExplained().result())


def test_prototype_crispness_against_the_class_average():
    rng = np.random.default_rng(2)
    averages = rng.random((3, 32))
    prototypes = np.stack([averages[0], 2.0 * averages[1], scipy.ndimage.uniform_filter1d(averages[2], 9)])
    result = metrics.prototype_crispness(prototypes, averages, [0, 1, 2], names=["a", "b", "c"])
    detail = lambda v: np.sum(reference_fine(v) ** 2)  # noqa: E731
    assert result["per_prototype"]["a"] == pytest.approx(1.0)
    assert result["per_prototype"]["b"] == pytest.approx(4.0)  # twice the contrast, four times the energy
    assert result["per_prototype"]["c"] == pytest.approx(detail(prototypes[2]) / detail(averages[2]))
    assert result["per_prototype"]["c"] < 0.2  # a blur
    assert result["median"] == pytest.approx(1.0) and result["min"] == result["per_prototype"]["c"]
    # Unsupervised: prototypes measured against their cluster's class; unmapped ones left out.
    mapped = metrics.prototype_crispness(prototypes, averages, [1, -1, 1])
    assert set(mapped["per_prototype"]) == {"0", "2"}
    assert mapped["per_prototype"]["0"] == pytest.approx(detail(prototypes[0]) / detail(averages[1]))


def test_pitch_tracking_is_pearson_r_and_slope_per_winning_prototype():
    rng = np.random.default_rng(3)
    notes = rng.integers(48, 84, size=60).astype(float)
    winners = np.repeat([0, 1, 2], 20)
    shifts = np.where(winners == 0, notes - 60 + 0.5 * rng.normal(size=60), 0.5 * (notes - 60))
    shifts[winners == 2] = 0.0  # pitch stage off: a constant shift tells nothing
    notes[:3] = -1  # unknown notes are left out
    result = metrics.pitch_tracking(winners, shifts, notes, 4, names=["a", "b", "c", "d"])
    assert set(result["per_prototype"]) == {"a", "b"}  # c is constant, d wins nothing
    known = notes >= 0
    for name, k in (("a", 0), ("b", 1)):
        chosen = known & (winners == k)
        fit = scipy.stats.linregress(notes[chosen], shifts[chosen])
        assert result["per_prototype"][name]["r"] == pytest.approx(fit.rvalue)
        assert result["per_prototype"][name]["slope"] == pytest.approx(fit.slope)
        assert result["per_prototype"][name]["clips"] == chosen.sum()
    assert result["per_prototype"]["b"]["slope"] == pytest.approx(0.5)
    assert result["r_median"] == pytest.approx(np.median([result["per_prototype"][n]["r"] for n in "ab"]))
    assert result["clips_with_note"] == 57
    assert metrics.pitch_tracking(winners, shifts, -np.ones(60), 4)["r_median"] is None


def test_pitch_semitones_is_the_median_ratio_over_real_frames():
    ratios = np.array([[2.0, 2.0, 2.0, 100.0], [0.5, 1.0, 0.25, 1.0]])
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 0]], np.float32)
    np.testing.assert_allclose(metrics.pitch_semitones(ratios, mask), [12.0, -12.0])


def test_explain_winner_matches_the_full_reconstruction(tmp_path):
    model = write_model_dir(str(tmp_path / "run"))
    rng = np.random.default_rng(4)
    log_mel = (0.4 + 0.2 * rng.random((3, 32, FEATURES.n_mels))).astype(np.float32)
    mask = np.ones((3, 32), np.float32)
    mask[1, 20:] = 0.0
    features = {"log_mel": log_mel, "mask": mask}
    make_transformations_depend_on_the_input(model)
    explained = model.explain_winner(features)
    details = model(features, training=False, return_details=True)
    winners = details["rec_errors"].numpy().argmin(1)
    np.testing.assert_array_equal(explained["winner"].numpy(), winners)
    np.testing.assert_allclose(explained["rec_errors"], details["rec_errors"], rtol=1e-6)
    rows = np.arange(3)
    for name in ("gain", "pitch_ratio", "low_slope", "low_cutoff", "high_slope", "high_cutoff"):
        np.testing.assert_allclose(explained[name], details[name].numpy()[rows, :, winners], rtol=1e-6)
    # The exact eq. 5 against training's pitch table: within the table's interpolation error.
    expected = details["reconstructions"].numpy()[rows, :, winners]
    np.testing.assert_allclose(explained["reconstruction"], expected, atol=2e-3)


def make_transformations_depend_on_the_input(model):
    """Untrained decoders output ~0 (identity transformations whatever the input): give them weight."""
    rng = np.random.default_rng(6)
    for name in ("gain", "pitch", "filters"):
        kernel = model.decoder(name).output_conv.kernel
        kernel.assign(rng.normal(0.0, 0.3, kernel.shape).astype(np.float32))


@pytest.mark.slow
def test_evaluate_reports_fidelity_independent_of_the_batch_size(tmp_path):
    lengths = {"train": [16, 20, 24, 40, 18, 30], "validation": [], "test": [16, 20, 33, 47, 17, 25, 60]}
    rng = np.random.default_rng(5)

    def spectrogram(index, num_frames, num_mels):
        return (0.4 + 0.2 * rng.random((num_frames, num_mels))).astype(np.float32)

    make_prepared_dir(tmp_path / "data", lengths, num_mels=FEATURES.n_mels, sample_rate=FEATURES.sample_rate,
                      n_fft=FEATURES.n_fft, hop_length=FEATURES.hop_length, spectrogram=spectrogram,
                      midi_note=lambda i: 50 + 3 * i)
    data_dir = str(tmp_path / "data")
    info = data.load_dataset_info(data_dir)
    model = write_model_dir(str(tmp_path / "run"))
    make_transformations_depend_on_the_input(model)
    # Padding a clip further (to a longer neighbour's length) changes what it gets:
    clip = next(iter(data.evaluation_dataset(data_dir, "test", batch_size=1)))[0]
    longer = {"log_mel": tf.tile(clip["log_mel"], [1, 4, 1]), "mask": tf.pad(clip["mask"], [[0, 0], [0, 48]])}
    assert not np.allclose(model(clip)["rec_errors"], model(longer)["rec_errors"], rtol=1e-4)
    summaries = [evaluation.evaluate_model(model, data_dir, "test", batch_size, info=info) for batch_size in (1, 3, 64)]
    for summary in summaries[1:]:
        assert summary["confusion_matrix"] == summaries[0]["confusion_matrix"]
        assert summary["rec_error"] == pytest.approx(summaries[0]["rec_error"], rel=1e-5)
        assert summary["fidelity"]["fine_structure_explained"] == pytest.approx(
            summaries[0]["fidelity"]["fine_structure_explained"], rel=1e-5)

    # The fidelity numbers from an independent pass over the clips, one at a time.
    fidelity = summaries[0]["fidelity"]
    x_fine, r_fine, winners, shifts, notes, class_sums = [], [], [], [], [], np.zeros((3, FEATURES.n_mels))
    for features, labels in data.evaluation_dataset(data_dir, "test", batch_size=1, with_metadata=True):
        frames = int(features["num_frames"][0])
        details = model({"log_mel": features["log_mel"], "mask": features["mask"]}, return_details=True)
        k = int(details["rec_errors"].numpy().argmin())
        x_fine.append(reference_fine(features["log_mel"].numpy()[0, :frames]))
        r_fine.append(reference_fine(details["reconstructions"].numpy()[0, :frames, k]))
        winners.append(k)
        shifts.append(12 * np.log2(np.median(details["pitch_ratio"].numpy()[0, :frames, k])))
        notes.append(int(features["midi_note"][0]))
    x_fine, r_fine = np.concatenate(x_fine), np.concatenate(r_fine)
    expected = 1.0 - np.sum((x_fine - r_fine) ** 2) / np.sum(x_fine**2)
    assert fidelity["fine_structure_explained"] == pytest.approx(expected, abs=1e-3)  # table vs exact eq. 5
    counts = np.zeros(3)
    for features, labels in data.evaluation_dataset(data_dir, "train", batch_size=1, with_metadata=True):
        frames = int(features["num_frames"][0])
        class_sums[int(labels[0])] += features["log_mel"].numpy()[0, :frames].sum(0)
        counts[int(labels[0])] += frames
    averages = class_sums / counts[:, None]
    prototypes = model.prototypes.numpy()
    for k, name in enumerate(model.class_names):
        crisp = np.sum(reference_fine(prototypes[k]) ** 2) / np.sum(reference_fine(averages[k]) ** 2)
        assert fidelity["prototype_crispness"]["per_prototype"][name] == pytest.approx(crisp, rel=1e-5)
    assert fidelity["pitch_tracking"]["clips_with_note"] == 7
    for k, name in enumerate(model.class_names):
        chosen = np.array(winners) == k
        if chosen.sum() >= 3 and np.ptp(np.array(notes)[chosen]) > 0:
            fit = scipy.stats.linregress(np.array(notes)[chosen], np.array(shifts)[chosen])
            assert fidelity["pitch_tracking"]["per_prototype"][name]["r"] == pytest.approx(fit.rvalue, abs=1e-3)
    assert "fine structure" in evaluation.summary_line(summaries[0])
