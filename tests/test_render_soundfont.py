"""SoundFont rendering: GM tables and note plans always; rendering only where FluidSynth and a SoundFont exist."""

import json
import os
import re

import numpy as np
import pytest
import soundfile as sf

from data_tools import render_soundfont as rs

SAMPLE_RATE = 16000
PROGRAMS = [40, 73]  # Violin, Flute


def test_general_midi_tables():
    assert len(rs.GM_PROGRAM_NAMES) == 128 and len(set(rs.GM_PROGRAM_NAMES)) == 128
    assert len(rs.GM_FAMILIES) == 16
    assert rs.program_directory(40) == "Strings/Violin"
    assert rs.program_directory(24) == "Guitar/Acoustic-Guitar-nylon"
    assert rs.program_directory(0) == "Piano/Acoustic-Grand-Piano"
    assert len(rs.BENCHMARK_PROGRAMS) >= 16
    directories = [rs.program_directory(p) for p in rs.BENCHMARK_PROGRAMS]
    assert len(set(directories)) == len(directories)
    assert all(high - low >= 24 for low, high in rs.BENCHMARK_PROGRAMS.values())


def test_note_plan_is_deterministic_and_covers_the_range():
    kwargs = dict(pitch_range=(60, 71), velocities=[40, 80], durations=[0.5, 1.0], seed=0)
    plan = rs.plan_notes(40, 24, **kwargs)
    assert plan == rs.plan_notes(40, 24, **kwargs)
    assert plan != rs.plan_notes(40, 24, **{**kwargs, "seed": 1})
    pitches = [note.midi_note for note in plan]
    assert sorted(pitches) == sorted(list(range(60, 72)) * 2)  # each pitch once per cycle through the range
    assert {note.velocity for note in plan} <= {40, 80} and {note.hold_s for note in plan} <= {0.5, 1.0}
    assert plan[0].path.startswith("Strings/Violin/ordinario/Violin-")
    assert re.fullmatch(r"Strings/Violin/ordinario/Violin-[A-G]#?\d-v(40|80)-0\.wav", plan[0].path)
    # Natural range by default for the benchmark programs.
    low, high = rs.BENCHMARK_PROGRAMS[58]
    tuba = rs.plan_notes(58, 50, pitch_range=None, velocities=[80], durations=[1.0], seed=0)
    assert all(low <= note.midi_note <= high for note in tuba)


def test_trim_tail_cuts_silence_and_fades():
    rate = 1000
    audio = np.concatenate([np.ones(100), np.zeros(400)]).astype(np.float32)
    trimmed = rs.trim_tail(audio, rate)
    assert trimmed.size == 100 + int(rs.FADE_S * rate)
    assert trimmed[-1] == 0.0 and trimmed[0] == 1.0
    assert rs.trim_tail(np.zeros(50, np.float32), rate).size == 0


def fluidsynth_unavailable_reason():
    try:
        rs.import_fluidsynth()
    except rs.RenderError as error:
        return str(error)
    if not os.path.isfile(rs.DEFAULT_SOUNDFONT):
        return f"no SoundFont at {rs.DEFAULT_SOUNDFONT} (apt-get install fluid-soundfont-gm)"
    return None


def render(out_dir, **overrides):
    kwargs = dict(
        soundfont=rs.DEFAULT_SOUNDFONT, programs=PROGRAMS, notes_per_program=3, pitch_range=(60, 72),
        velocities=[64, 100], durations=[0.3], sample_rate=SAMPLE_RATE, seed=0, max_release_s=1.0,
    )
    kwargs.update(overrides)
    return rs.render_dataset(str(out_dir), **kwargs)


def test_missing_soundfont_is_a_clear_error(tmp_path):
    with pytest.raises(rs.RenderError, match="apt-get install"):
        render(tmp_path / "out", soundfont=str(tmp_path / "missing.sf2"))
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(fluidsynth_unavailable_reason() is not None, reason=str(fluidsynth_unavailable_reason()))
def test_render_layout_and_determinism(tmp_path):
    info = render(tmp_path / "a")
    assert info["written"] == 6 and info["skipped"] == []
    with open(tmp_path / "a" / rs.INFO_FILENAME) as f:
        assert json.load(f)["programs"]["40"]["directory"] == "Strings/Violin"
    for program in PROGRAMS:
        directory = tmp_path / "a" / rs.program_directory(program) / "ordinario"
        paths = sorted(directory.glob("*.wav"))
        assert len(paths) == 3
        for path in paths:
            meta = sf.info(str(path))
            assert (meta.samplerate, meta.channels, meta.subtype) == (SAMPLE_RATE, 1, "PCM_16")
            audio, _ = sf.read(str(path), dtype="float32")
            assert 0.3 <= audio.size / SAMPLE_RATE <= 0.3 + 1.0 + rs.BLOCK_S  # hold + at most max_release
            assert np.sqrt(np.mean(audio**2)) > 1e-3, f"{path} is (nearly) silent"
            assert np.max(np.abs(audio)) <= rs.MAX_PEAK
    render(tmp_path / "b")
    for path in (tmp_path / "a").rglob("*.wav"):
        assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes()


@pytest.mark.skipif(fluidsynth_unavailable_reason() is not None, reason=str(fluidsynth_unavailable_reason()))
def test_a_note_does_not_depend_on_the_notes_before_it(tmp_path):
    note = rs.Note(program=40, midi_note=67, velocity=90, hold_s=0.3, index=0)
    with rs.SoundFontRenderer(rs.DEFAULT_SOUNDFONT, SAMPLE_RATE, max_release_s=1.0) as renderer:
        alone = renderer.render(note)
    with rs.SoundFontRenderer(rs.DEFAULT_SOUNDFONT, SAMPLE_RATE, max_release_s=1.0) as renderer:
        renderer.render(rs.Note(program=0, midi_note=48, velocity=120, hold_s=0.5, index=0))
        after = renderer.render(note)
    np.testing.assert_array_equal(alone, after)
