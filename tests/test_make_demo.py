"""The synthetic demo dataset: layout, format, determinism, pitch ranges, distinct timbres, safe writing."""

import itertools
import os
import re
import subprocess
import sys

import librosa
import numpy as np
import pytest
import soundfile as sf

from data_tools import layouts, make_demo, synth

CLIPS_PER_CLASS = 4
SAMPLE_RATE = 16000
NAME_PATTERN = re.compile(
    r"^(?P<instrument>[A-Za-z]+)-(?P<note>[A-G]#?\d)-(?P<dynamic>pp|p|mf|f|ff)-(?P<index>\d{3})\.wav$"
)


def read_tree(root):
    """{relative path: bytes} of every file under root."""
    files = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = f.read()
    return files


def wav_paths(root, instrument):
    directory = os.path.join(root, make_demo.FAMILY, instrument.name, make_demo.TECHNIQUE)
    return sorted(os.path.join(directory, name) for name in os.listdir(directory))


def midi_of(note):
    name, octave = note[:-1], int(note[-1])
    return synth.NOTE_NAMES.index(name) + 12 * (octave + 1)


def harmonic_profile(audio, f0, num_partials=8):
    """Level (dB, relative to the loudest) of partials 1..num_partials of a long-term spectrum: pitch-invariant."""
    spectrum = np.abs(librosa.stft(audio, n_fft=4096, hop_length=1024)).mean(axis=1)
    frequencies = np.fft.rfftfreq(4096, 1.0 / SAMPLE_RATE)
    peaks = np.array([spectrum[np.abs(frequencies / (h * f0) - 1.0) < 0.03].max() for h in range(1, num_partials + 1)])
    levels = 20.0 * np.log10(np.maximum(peaks, 1e-8))
    return np.maximum(levels - levels.max(), -60.0)


def yin_f0(audio):
    return float(np.median(librosa.yin(audio, fmin=60.0, fmax=2000.0, sr=SAMPLE_RATE, frame_length=1024)))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("demo") / "data")
    count = make_demo.make_demo(root, clips_per_class=CLIPS_PER_CLASS, seed=0, sample_rate=SAMPLE_RATE)
    assert count == CLIPS_PER_CLASS * len(synth.INSTRUMENTS)
    return root


def test_layout_and_format(demo):
    assert sorted(os.listdir(demo)) == sorted([make_demo.FAMILY, make_demo.README_FILENAME])
    assert sorted(os.listdir(os.path.join(demo, make_demo.FAMILY))) == sorted(i.name for i in synth.INSTRUMENTS)
    assert len(synth.INSTRUMENTS) == 8
    for instrument in synth.INSTRUMENTS:
        paths = wav_paths(demo, instrument)
        assert len(paths) == CLIPS_PER_CLASS
        for path in paths:
            match = NAME_PATTERN.match(os.path.basename(path))
            assert match and match["instrument"] == instrument.name, path
            info = sf.info(path)
            assert (info.samplerate, info.channels, info.subtype, info.format) == (SAMPLE_RATE, 1, "PCM_16", "WAV")
            assert synth.MIN_DURATION_S <= info.duration <= synth.MAX_DURATION_S
            audio, _ = sf.read(path, dtype="float32")
            assert np.all(np.isfinite(audio))
            peak = np.max(np.abs(audio))
            assert peak <= 1.0
            assert np.sqrt(np.mean(audio**2)) > 1e-3, f"{path} is (nearly) silent"
            # The peak level follows the dynamic marking in the name (+-1 dB, +-0.1 for quantisation).
            level = dict(synth.DYNAMICS)[match["dynamic"]]
            assert level - 1.1 <= 20.0 * np.log10(peak) <= level + 1.1, path
    with open(os.path.join(demo, make_demo.README_FILENAME), encoding="utf-8") as f:
        readme = f.read()
    assert readme.startswith(make_demo.README_SIGNATURE)
    assert "seed=0" in readme and all(i.name in readme for i in synth.INSTRUMENTS)


def test_deterministic(demo, tmp_path):
    same = str(tmp_path / "same")
    make_demo.make_demo(same, clips_per_class=CLIPS_PER_CLASS, seed=0, sample_rate=SAMPLE_RATE)
    assert read_tree(same) == read_tree(demo)

    other = str(tmp_path / "other")
    make_demo.make_demo(other, clips_per_class=CLIPS_PER_CLASS, seed=1, sample_rate=SAMPLE_RATE)
    reference = read_tree(demo)
    different = read_tree(other)
    assert sorted(different) != sorted(reference) or all(
        different[p] != reference[p] for p in reference if p.endswith(".wav")
    )


def test_smaller_run_is_a_prefix(demo, tmp_path):
    small = str(tmp_path / "small")
    make_demo.make_demo(small, clips_per_class=2, seed=0, sample_rate=SAMPLE_RATE)
    reference = read_tree(demo)
    for path, content in read_tree(small).items():
        if path.endswith(".wav"):
            assert reference[path] == content


def test_pitches_within_the_instrument_ranges(demo):
    for instrument in synth.INSTRUMENTS:
        for path in wav_paths(demo, instrument)[:2]:
            note = NAME_PATTERN.match(os.path.basename(path))["note"]
            assert instrument.lowest_note <= midi_of(note) <= instrument.highest_note
            # the note data preparation reads (and pitch tracking is measured against)
            assert layouts.midi_note_from_filename(path) == midi_of(note)
            audio, _ = sf.read(path, dtype="float32")
            cents = 1200.0 * np.log2(yin_f0(audio) / synth.midi_to_hz(midi_of(note)))
            assert abs(cents) <= synth.MAX_DETUNE_CENTS + 10.0, (path, cents)
    # Two-octave ranges that overlap, so pitch does not name the class.
    lows = [i.lowest_note for i in synth.INSTRUMENTS]
    assert all(i.highest_note - i.lowest_note == 24 for i in synth.INSTRUMENTS)
    assert max(lows) < min(lows) + 24


def test_timbres_are_distinct(demo):
    """Class means of a pitch-invariant feature (partial levels) differ by more than the within-class spread."""
    means, spreads = {}, []
    for instrument in synth.INSTRUMENTS:
        profiles = []
        for path in wav_paths(demo, instrument):
            audio, _ = sf.read(path, dtype="float32")
            profiles.append(harmonic_profile(audio, yin_f0(audio)))
        means[instrument.name] = np.mean(profiles, axis=0)
        spreads.append(np.sqrt(np.mean(np.var(profiles, axis=0))))
    distances = {
        (a, b): float(np.sqrt(np.mean((means[a] - means[b]) ** 2))) for a, b in itertools.combinations(means, 2)
    }
    closest = min(distances, key=distances.get)
    assert distances[closest] > max(4.0, np.median(spreads)), (closest, distances[closest], spreads)


def test_refuses_to_replace_foreign_data(tmp_path):
    target = tmp_path / "data"
    target.mkdir()
    (target / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="--overwrite"):
        make_demo.make_demo(str(target), clips_per_class=1)
    assert (target / "precious.txt").read_text() == "keep me"

    make_demo.make_demo(str(target), clips_per_class=1, overwrite=True)
    assert not (target / "precious.txt").exists()
    # A previous demo is replaced without --overwrite; no staging directories are left behind.
    make_demo.make_demo(str(target), clips_per_class=2, seed=3)
    assert "seed=3" in (target / make_demo.README_FILENAME).read_text()
    assert os.listdir(tmp_path) == ["data"]


def test_command_line(tmp_path):
    out_dir = tmp_path / "cli"
    command = [sys.executable, "-m", "data_tools.make_demo", f"--out_dir={out_dir}", "--clips_per_class=1", "--seed=5"]
    subprocess.run(command, check=True, capture_output=True, cwd=tmp_path)
    assert len(list(out_dir.glob("Synth/*/ordinario/*.wav"))) == len(synth.INSTRUMENTS)
    (out_dir / "Synth" / "Reed" / "ordinario" / "extra.txt").write_text("x")
    (out_dir / make_demo.README_FILENAME).unlink()
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode != 0 and "--overwrite" in result.stderr
