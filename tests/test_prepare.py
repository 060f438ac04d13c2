"""Data preparation (data_tools.prepare): layouts, splits, bad files, stored features, reruns, errors."""

import csv
import os
import subprocess
import sys

import librosa
import numpy as np
import pytest
import soundfile
import tensorflow as tf
from absl import flags
from absl.testing import flagsaver

from amych_tf import data, spectral
from data_tools import audio, conversion, layouts, prepare
from data_tools.conversion import EmptyClassError, NoUsableFilesError, PrepareError
from helpers import harmonic_tone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Small features keep the tests fast; one test uses the real SOL preset.
SMALL_FEATURES = dict(sample_rate=8000, n_fft=256, hop_length=128, n_mels=32)
SMALL_CONFIG = spectral.FeatureConfig(**SMALL_FEATURES)
SOL_CLASSES = ("PluckedStrings/Guitar", "Flutes/Flute", "Strings/Viola")  # paper classes, out of paper order
SOURCE_RATE = 16000


def write_tone(path, f0, seconds=0.4, sample_rate=SOURCE_RATE, channels=1, **kwargs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tone = harmonic_tone(f0, sample_rate, seconds)
    if channels == 2:  # different channels, so a wrong mix-down shows
        tone = np.stack([tone, 0.5 * harmonic_tone(1.5 * f0, sample_rate, seconds)], axis=1)
    soundfile.write(path, tone, sample_rate, **kwargs)


def write_bytes(path, content):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)


# Bad files placed in the Guitar class of the SOL tree, with the reason kind they get.
BAD_SOL_FILES = {
    "PluckedStrings/Guitar/ordinario/corrupt.flac": "not readable audio",
    "PluckedStrings/Guitar/ordinario/empty.wav": "empty file",
    "PluckedStrings/Guitar/ordinario/notes.wav": "not readable audio",
    "PluckedStrings/Guitar/ordinario/silent.wav": "silent",
    "PluckedStrings/Guitar/ordinario/dangling.wav": "cannot open",
}
STEREO_FILE = "PluckedStrings/Guitar/harmonics/stereo-44k.wav"
SHORT_FILE = "Flutes/Flute/ordinario/short.wav"
MP3_FILE = "Strings/Viola/pizzicato/tone.mp3"


@pytest.fixture
def sol_tree(tmp_path):
    """SOL layout: 3 paper classes (5-7 good files each) + a non-paper folder + every kind of bad file."""
    root = tmp_path / "sol"
    for index, name in enumerate(SOL_CLASSES + ("Percussion/Marimba",)):
        for take in range(5):
            technique = "ordinario" if take < 3 else "vibrato"
            write_tone(str(root / name / technique / f"note-{take}.wav"), 150.0 * (index + 1) + 20 * take)
    write_tone(str(root / STEREO_FILE), 300.0, seconds=0.25, sample_rate=44100, channels=2)
    write_tone(str(root / SHORT_FILE), 500.0, seconds=0.02, sample_rate=8000)
    write_tone(str(root / MP3_FILE), 350.0, seconds=0.5, format="MP3")
    write_bytes(str(root / "PluckedStrings/Guitar/ordinario/corrupt.flac"), np.random.default_rng(0).bytes(4000))
    write_bytes(str(root / "PluckedStrings/Guitar/ordinario/empty.wav"), b"")
    write_bytes(str(root / "PluckedStrings/Guitar/ordinario/notes.wav"), b"this is a text file, not audio\n")
    soundfile.write(str(root / "PluckedStrings/Guitar/ordinario/silent.wav"), np.zeros(4000), SOURCE_RATE)
    os.symlink(str(root / "missing-target.wav"), str(root / "PluckedStrings/Guitar/ordinario/dangling.wav"))
    write_bytes(str(root / "README.txt"), b"not an audio extension: not looked at\n")
    return str(root)


# LibriSpeech speakers and their utterance lengths (s): 103 has the most audio,
# 19 and 250 tie (19 ranks first: lower id), 7 has the least.
SPEAKER_UTTERANCES = {"19": [0.5, 0.5, 0.5], "103": [0.8, 0.8, 0.8], "250": [0.75, 0.75], "7": [0.3, 0.3, 0.3]}


@pytest.fixture
def librispeech_tree(tmp_path):
    root = tmp_path / "train-clean-360"
    for index, (speaker, lengths) in enumerate(SPEAKER_UTTERANCES.items()):
        for utterance, seconds in enumerate(lengths):
            chapter = str(1000 + utterance % 2)
            path = root / speaker / chapter / f"{speaker}-{chapter}-{utterance:04d}.flac"
            write_tone(str(path), 120.0 + 40 * index + 5 * utterance, seconds=seconds)
        write_bytes(str(root / speaker / "1000" / f"{speaker}-1000.trans.txt"), b"TRANSCRIPT\n")
    return str(root)


def run_prepare(audio_dir, out_dir, layout="sol", features=SMALL_FEATURES, **kwargs):
    config = conversion.resolve_features(layout, **features)
    return conversion.prepare_dataset(str(audio_dir), str(out_dir), layout=layout, features=config, **kwargs)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def read_examples(out_dir):
    """Every stored example, in shard order, decoded with data.parse_example."""
    info = data.DatasetInfo.load(out_dir)
    examples = []
    for split in data.SPLITS:
        for record in tf.data.TFRecordDataset(info.shard_paths(out_dir, split)):
            parsed = data.parse_example(record, num_mels=info.features.n_mels, storage_dtype=info.storage_dtype)
            examples.append({key: value.numpy() for key, value in parsed.items()} | {"split": split})
    return examples


def directory_bytes(directory):
    return {name: open(os.path.join(directory, name), "rb").read() for name in sorted(os.listdir(directory))}


def expected_log_mel(path, config):
    """Independent reference: librosa mono mix + soxr_hq resampling + tiling, then the model's front end."""
    samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    mono = librosa.to_mono(samples.T)
    if rate != config.sample_rate:
        mono = librosa.resample(mono, orig_sr=rate, target_sr=config.sample_rate, res_type="soxr_hq")
    min_samples = config.num_samples(data.MIN_FRAMES)
    if len(mono) < min_samples:
        mono = np.tile(mono, -(-min_samples // len(mono)))[:min_samples]
    return spectral.log_mel(mono, config).numpy()


def assert_no_temp_files(directory):
    assert not [name for name in os.listdir(directory) if ".tmp" in name]


def test_sol_good_files_land_in_one_split_and_bad_ones_are_skipped(sol_tree, tmp_path):
    out = tmp_path / "out"
    summary = run_prepare(sol_tree, out)

    info = data.DatasetInfo.load(str(out))
    assert info.class_names == [name for name in layouts.SOL_PAPER_CLASSES if name in SOL_CLASSES]
    manifest = read_csv(out / data.MANIFEST_FILENAME)
    skipped = read_csv(out / data.SKIPPED_FILENAME)
    used = [row["path"] for row in manifest]
    kept_candidates = [path for path in layouts.list_audio_files(sol_tree) if not path.startswith("Percussion/")]
    assert sorted(used + [row["path"] for row in skipped]) == kept_candidates
    assert len(set(used)) == len(used)  # each file in exactly one split
    assert {row["path"]: row["reason"].split(":")[0] for row in skipped} == BAD_SOL_FILES
    assert all(row["reason"].split(": ", 1)[1] for row in skipped)  # "kind: detail"

    # Manifest: split then path order; labels and counts agree with dataset_info.json.
    order = [(data.SPLITS.index(row["split"]), row["path"]) for row in manifest]
    assert order == sorted(order)
    assert all(info.class_names[int(row["label"])] == row["class_name"] for row in manifest)
    assert info.split_counts == {split: sum(row["split"] == split for row in manifest) for split in data.SPLITS}
    for split in data.SPLITS:  # stratified: every class (>= 3 files) appears in every split
        assert all(info.class_counts[split][name] >= 1 for name in info.class_names)
    assert info.num_skipped == len(BAD_SOL_FILES) and info.layout == "sol" and info.seed == 0
    assert set(info.versions) >= {"amych_tf", "tensorflow", "librosa", "soundfile", "numpy"}

    # The missing paper classes and the ignored non-paper folder are reported.
    assert "30 of the 33 paper SOL classes have no audio files" in "\n".join(summary.warnings)
    assert any("Percussion/Marimba" in warning and "5 audio file(s)" in warning for warning in summary.warnings)
    assert summary.num_found == len(kept_candidates) and summary.num_ignored == 5
    assert summary.skipped_by_reason == {"not readable audio": 2, "empty file": 1, "silent": 1, "cannot open": 1}
    text = str(summary)
    assert f"Prepared {out}" in text and "skipped:  5 (not readable audio 2," in text and "classes:  3" in text
    assert_no_temp_files(str(out))


def test_stored_log_mel_is_the_front_end_of_the_mono_resampled_audio(sol_tree, tmp_path):
    out = tmp_path / "out"
    run_prepare(sol_tree, out)
    manifest = read_csv(out / data.MANIFEST_FILENAME)
    examples = read_examples(str(out))

    assert [e["path"].decode() for e in examples] == [row["path"] for row in manifest]
    for example, row in zip(examples, manifest):
        assert (example["split"], example["label"], example["class_name"].decode()) == (
            row["split"], int(row["label"]), row["class_name"]
        )
        assert example["midi_note"] == int(row["midi_note"]) == layouts.midi_note_from_filename(row["path"])
        expected = expected_log_mel(os.path.join(sol_tree, row["path"]), SMALL_CONFIG)
        assert example["num_frames"] == int(row["num_frames"]) == expected.shape[0] >= data.MIN_FRAMES
        np.testing.assert_allclose(example["log_mel"], expected, atol=1e-6, err_msg=row["path"])

    by_path = {row["path"]: row for row in manifest}
    # Stereo 44.1 kHz, 0.25 s: mixed to mono, resampled to 2000 samples at 8 kHz -> 14 frames, tiled to 16.
    stereo = by_path[STEREO_FILE]
    assert float(stereo["duration"]) == pytest.approx(0.25)
    assert SMALL_CONFIG.num_frames(round(0.25 * SMALL_CONFIG.sample_rate)) == 14 and stereo["num_frames"] == "16"
    assert by_path[SHORT_FILE]["num_frames"] == str(data.MIN_FRAMES)  # 160 samples < n_fft: tiled
    assert by_path["Flutes/Flute/ordinario/note-0.wav"]["num_frames"] == "24"  # 0.4 s at 8 kHz, untiled
    assert MP3_FILE in by_path


@pytest.mark.parametrize("path, note", [
    ("Strings/Violin/ordinario/Vn-ord-A#3-ff-4c-N.wav", 58),  # SOL naming
    ("Tubas/Bass-Tuba/ordinario/BTb-ord-C#1-ff-N.wav", 25),
    ("Flutes/Flute/ordinario/Fl-ord-Bb5-pp.wav", 82),
    ("Synth/Reed/ordinario/Reed-A3-mf-017.wav", 57),  # make_demo
    ("Strings/Violin/ordinario/Violin-C4-v80-0.wav", 60),  # render_soundfont
    ("PluckedStrings/Guitar/ordinario/Gtr-ord-e2-mf.wav", 40),  # lower-case letter
    ("Flutes/Flute/x/Flute-60-mf.wav", 60),  # a plain MIDI number
    ("Flutes/Flute/ordinario/note-3.wav", -1),  # a take number is not a note
    ("Synth/Reed/ordinario/Reed-mf-017.wav", -1),
    ("speaker/chapter/19-198-0001.flac", -1),  # LibriSpeech: out of the piano's range or zero-led
])
def test_midi_note_from_filename(path, note):
    assert layouts.midi_note_from_filename(path) == note


def test_real_sol_preset_on_very_short_audio(tmp_path):
    audio_dir = tmp_path / "sol"
    write_tone(str(audio_dir / "Flutes/Flute/ordinario/a.wav"), 440.0, seconds=0.05, sample_rate=44100)
    write_tone(str(audio_dir / "Flutes/Flute/ordinario/b.wav"), 660.0, seconds=0.3, sample_rate=48000, channels=2)
    out = tmp_path / "out"
    run_prepare(audio_dir, out, features={}, sol_classes="discovered")

    config = spectral.FeatureConfig.preset("sol")
    assert data.DatasetInfo.load(str(out)).features == config
    examples = {e["path"].decode(): e for e in read_examples(str(out))}
    for path, frames in [("Flutes/Flute/ordinario/a.wav", 16), ("Flutes/Flute/ordinario/b.wav", 22)]:
        expected = expected_log_mel(str(audio_dir / path), config)
        assert examples[path]["log_mel"].shape == expected.shape == (frames, 128)
        np.testing.assert_allclose(examples[path]["log_mel"], expected, atol=1e-6)


def test_float16_storage_round_trips_within_float16_precision(sol_tree, tmp_path):
    run_prepare(sol_tree, tmp_path / "f32")
    run_prepare(sol_tree, tmp_path / "f16", storage_dtype="float16")
    assert data.DatasetInfo.load(str(tmp_path / "f16")).storage_dtype == "float16"
    for full, half in zip(read_examples(str(tmp_path / "f32")), read_examples(str(tmp_path / "f16"))):
        assert half["log_mel"].dtype == np.float32
        np.testing.assert_array_equal(half["log_mel"], full["log_mel"].astype(np.float16).astype(np.float32))


def test_reruns_are_byte_identical_whatever_the_number_of_workers(sol_tree, tmp_path):
    """In-process with one worker, rerun, then the CLI in a subprocess with two spawned workers."""
    out = tmp_path / "out"
    run_prepare(sol_tree, out, shard_size=4)
    first = directory_bytes(str(out))
    assert sum(name.startswith("train-") for name in first) > 1
    run_prepare(sol_tree, out, shard_size=4)
    assert directory_bytes(str(out)) == first

    cli_out = tmp_path / "cli"
    flag_values = [f"--{name}={value}" for name, value in SMALL_FEATURES.items()]
    result = subprocess.run(
        [sys.executable, "-m", "data_tools.prepare", "--layout=sol", f"--audio_dir={sol_tree}",
         f"--out_dir={cli_out}", "--shard_size=4", "--num_workers=2", *flag_values],
        cwd=REPO, capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"Prepared {cli_out}" in result.stdout and "Traceback" not in result.stderr
    assert directory_bytes(str(cli_out)) == first


def test_rerun_with_fewer_shards_removes_stale_shards_only(sol_tree, tmp_path):
    out = tmp_path / "out"
    run_prepare(sol_tree, out, shard_size=2)
    assert data.DatasetInfo.load(str(out)).num_shards["train"] > 1
    (out / "my-notes.txt").write_text("not ours")
    run_prepare(sol_tree, out, shard_size=100)
    shards = sorted(name for name in os.listdir(out) if name.endswith(".tfrecord"))
    assert shards == [data.shard_filename(split, 0, 1) for split in ("test", "train", "validation")]
    assert (out / "my-notes.txt").exists()
    assert_no_temp_files(str(out))


def test_split_is_stratified_seeded_and_independent_of_listing_order(sol_tree):
    assert [conversion.split_sizes(n) for n in (1, 2, 3, 5, 10, 100)] == [
        (1, 0, 0), (2, 0, 0), (1, 1, 1), (3, 1, 1), (7, 1, 2), (70, 10, 20)
    ]
    discovery = layouts.discover("sol", sol_tree)
    plan = conversion.assign_splits(discovery, seed=0)
    shuffled = layouts.Discovery(
        discovery.class_names, {name: list(reversed(paths)) for name, paths in discovery.files.items()}
    )
    assert conversion.assign_splits(shuffled, seed=0) == plan
    assert conversion.assign_splits(discovery, seed=1) != plan
    # A class's split depends only on the seed and its own files.
    alone = discovery.keep(["Strings/Viola"])
    assert [c for c in plan if c.class_name == "Strings/Viola"] == [
        conversion.PlannedClip(c.split, 2, c.class_name, c.path) for c in conversion.assign_splits(alone, seed=0)
    ]


def test_librispeech_keeps_the_speakers_with_most_audio_labelled_by_rank(librispeech_tree, tmp_path):
    out = tmp_path / "out"
    summary = run_prepare(librispeech_tree, out, layout="librispeech", num_classes=3)
    info = data.DatasetInfo.load(str(out))
    assert info.class_names == ["103", "19", "250"]  # 2.4 s, then a 1.5 s tie broken by speaker id
    assert summary.num_ignored == 3  # speaker 7
    manifest = read_csv(out / data.MANIFEST_FILENAME)
    assert all(row["path"].startswith(row["class_name"] + "/") for row in manifest)
    assert all(info.class_names[int(row["label"])] == row["class_name"] for row in manifest)
    assert len(manifest) == 8

    all_speakers = run_prepare(librispeech_tree, tmp_path / "all", layout="librispeech")
    assert all_speakers.class_names == ["103", "19", "250", "7"]
    assert "asked for 128 speakers, found 4" in all_speakers.warnings[-1]
    assert layouts.rank_speakers({"9": 1.0, "10": 1.0, "2": 0.5}, 2) == ["9", "10"]  # numeric ids


def test_folders_layout_sorted_classes_any_depth(tmp_path):
    root = tmp_path / "sounds"
    write_tone(str(root / "dog" / "a.wav"), 200.0)
    write_tone(str(root / "dog" / "deep" / "er" / "b.ogg"), 210.0, format="OGG")
    write_tone(str(root / "cat" / "c.flac"), 400.0)
    write_tone(str(root / "loose.wav"), 300.0)
    os.makedirs(root / "docs")
    summary = run_prepare(root, tmp_path / "out", layout="folders")
    assert summary.class_names == ["cat", "dog"]
    assert summary.num_found == 3 and summary.num_ignored == 1
    assert any("docs" in warning for warning in summary.warnings)


def test_features_default_to_the_layouts_preset_and_flags_override_them():
    assert conversion.resolve_features("folders") == spectral.FeatureConfig.preset("sol")
    assert conversion.resolve_features("librispeech") == spectral.FeatureConfig.preset("librispeech")
    assert conversion.resolve_features("librispeech", preset="sol", n_mels=64) == spectral.FeatureConfig(
        44100, 2048, 512, 64
    )
    assert conversion.resolve_features("sol", **SMALL_FEATURES).fmax == 4000.0  # Nyquist of the new rate


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_skipped(sol_tree, tmp_path):
    locked = os.path.join(sol_tree, "Flutes/Flute/ordinario/note-0.wav")
    os.chmod(locked, 0)
    run_prepare(sol_tree, tmp_path / "out")
    reasons = {row["path"]: row["reason"] for row in read_csv(tmp_path / "out" / data.SKIPPED_FILENAME)}
    assert reasons["Flutes/Flute/ordinario/note-0.wav"] == "cannot open: Permission denied"


def test_permission_error_becomes_a_skip_reason(monkeypatch):
    """The same path as the test above, for runs as root (which reads any file)."""

    def denied(path, mode):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(audio, "open", denied, raising=False)
    outcome = audio.load_clip_or_reason("any.wav", 8000, 2176)
    assert isinstance(outcome, audio.UnusableAudio) and str(outcome) == "cannot open: Permission denied"


def test_errors_are_specific_and_leave_nothing_behind(sol_tree, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(PrepareError, match="--audio_dir .*nowhere' does not exist"):
        run_prepare(tmp_path / "nowhere", out)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoUsableFilesError, match="no audio files .* found under .* in the sol layout"):
        run_prepare(tmp_path / "empty", out)
    with pytest.raises(PrepareError, match="--num_classes applies to --layout=librispeech only"):
        run_prepare(sol_tree, out, num_classes=2)
    with pytest.raises(PrepareError, match="invalid feature parameters: .*fmax"):
        conversion.resolve_features("sol", sample_rate=8000, fmax=6000)
    assert not out.exists()

    bad_only = tmp_path / "bad"
    write_bytes(str(bad_only / "x/y.wav"), b"text")
    with pytest.raises(NoUsableFilesError, match=r"none of the 1 audio files found could be used \(not readable"):
        run_prepare(bad_only, out, layout="folders")
    assert not out.exists()

    # A class whose files are all bad fails the run; an existing dataset is left as it was.
    run_prepare(sol_tree, out)
    before = directory_bytes(str(out))
    for name in os.listdir(os.path.join(sol_tree, "Strings/Viola/vibrato")):
        write_bytes(os.path.join(sol_tree, "Strings/Viola/vibrato", name), b"garbage")
    for name in os.listdir(os.path.join(sol_tree, "Strings/Viola/ordinario")):
        soundfile.write(os.path.join(sol_tree, "Strings/Viola/ordinario", name), np.zeros(100), SOURCE_RATE)
    os.remove(os.path.join(sol_tree, MP3_FILE))
    with pytest.raises(EmptyClassError, match=r"'Strings/Viola' \(all 5 skipped: silent 3, not readable audio 2\)"):
        run_prepare(sol_tree, out, shard_size=1)
    assert directory_bytes(str(out)) == before


def run_cli(capsys, *argv):
    prepare.define_flags()
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["prepare", *argv])
        code = prepare.main(["prepare"])
    return code, capsys.readouterr()


def test_cli_prints_one_line_errors_and_exits_non_zero(tmp_path, capsys):
    out = f"--out_dir={tmp_path / 'o'}"
    code, output = run_cli(capsys, "--layout=sol", f"--audio_dir={tmp_path / 'nowhere'}", out)
    assert code == 1 and output.err == f"error: --audio_dir '{tmp_path / 'nowhere'}' does not exist\n"
    (tmp_path / "empty").mkdir()
    code, output = run_cli(capsys, "--layout=librispeech", f"--audio_dir={tmp_path / 'empty'}", out)
    assert code == 1 and output.err.startswith("error: no audio files") and output.err.count("\n") == 1
    assert "train-clean-360" in output.err  # the layout's hint
    code, output = run_cli(capsys, "--layout=sol", f"--audio_dir={tmp_path}", out, "--preset=timit")
    assert code == 1 and "unknown --preset 'timit'" in output.err
    assert not (tmp_path / "o").exists()


def test_modules_run_by_workers_do_not_import_tensorflow():
    check = "import sys, data_tools.prepare, data_tools.audio; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", check], cwd=REPO, check=True, timeout=60)
