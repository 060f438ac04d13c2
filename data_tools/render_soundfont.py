"""Render single notes of General MIDI programs from a SoundFont into the SOL layout.

    python -m data_tools.render_soundfont --out_dir=DIR [--soundfont=/usr/share/sounds/sf2/FluidR3_GM.sf2]
        [--programs=0,24,40,...] [--notes_per_program=50] [--pitch_range=36,84]
        [--velocities=40,60,80,100,120] [--durations=0.5,1,2] [--sample_rate=44100] [--seed=0]

Writes `<GM family>/<GM program name>/ordinario/<name>-<note>-v<velocity>-<index>.wav`
(e.g. `Strings/Violin/ordinario/Violin-C4-v80-0.wav`, 16-bit mono WAV) and
`render_info.json` (settings, SoundFont preset names, counts, skipped notes).
Needs FluidSynth and pyfluidsynth (the `soundfont` extra):

    apt-get install fluidsynth fluid-soundfont-gm && pip install -e ".[soundfont]"

Decisions:

* **Offline and dry.** No audio driver is started; samples come from
  `fluid_synth_write_float` (called through pyfluidsynth's ctypes handle, as
  pyfluidsynth only wraps the 16-bit writer, which adds random dither). Reverb
  and chorus are off, so a note is the instrument, not a room. Output is the mean
  of the two channels.
* **A note** is note-on, `hold` seconds of rendering, note-off, then the release
  tail rendered in blocks until a block falls below `TAIL_DB` relative to the
  note's peak (at most `--max_release` seconds). Trailing samples below
  `TAIL_DB` are trimmed and the last `FADE_S` faded out. All voices are killed
  before the next note, so a note does not depend on the ones before it.
* **Silent notes** (peak below `SILENCE_PEAK`, e.g. a preset without samples
  for that key) are skipped and listed in render_info.json and the log.
* **Level.** Fixed synth gain (`SYNTH_GAIN`), so velocity keeps its effect on
  loudness; a note whose peak would exceed `MAX_PEAK` is scaled down to it
  (counted in render_info.json).
* **Pitches** of a program are drawn without replacement from its range (the
  range is cycled through again when more notes are asked for), so notes cover
  the range evenly; velocity and hold duration are uniform choices from their
  lists. By default each program of `BENCHMARK_PROGRAMS` uses its instrument's
  natural range and other programs `DEFAULT_PITCH_RANGE`; `--pitch_range`
  overrides both. The plan of a program depends only on (seed, program).
* **Deterministic**: the same flags and SoundFont give byte-identical files.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import re
import time

import numpy as np
from absl import app, flags, logging

from data_tools import synth
from data_tools.make_demo import write_wav
from data_tools.staging import staged_directory

DEFAULT_SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
INSTALL_HINT = 'apt-get install fluidsynth fluid-soundfont-gm && pip install -e ".[soundfont]"'
INFO_FILENAME = "render_info.json"
TECHNIQUE = "ordinario"
SYNTH_GAIN = 1.0  # FluidSynth's default 0.2 leaves single notes near -25 dBFS
MAX_PEAK = 0.99
SILENCE_PEAK = 1e-4  # -80 dBFS
TAIL_DB = -60.0
FADE_S = 0.01
BLOCK_S = 0.05
DEFAULT_PITCH_RANGE = (36, 84)

GM_FAMILIES = (
    "Piano", "Chromatic Percussion", "Organ", "Guitar", "Bass", "Strings", "Ensemble", "Brass",
    "Reed", "Pipe", "Synth Lead", "Synth Pad", "Synth Effects", "Ethnic", "Percussive", "Sound Effects",
)  # program p belongs to family p // 8

GM_PROGRAM_NAMES = (
    "Acoustic Grand Piano", "Bright Acoustic Piano", "Electric Grand Piano", "Honky-tonk Piano",
    "Electric Piano 1", "Electric Piano 2", "Harpsichord", "Clavinet",
    "Celesta", "Glockenspiel", "Music Box", "Vibraphone", "Marimba", "Xylophone", "Tubular Bells", "Dulcimer",
    "Drawbar Organ", "Percussive Organ", "Rock Organ", "Church Organ", "Reed Organ", "Accordion", "Harmonica",
    "Tango Accordion",
    "Acoustic Guitar (nylon)", "Acoustic Guitar (steel)", "Electric Guitar (jazz)", "Electric Guitar (clean)",
    "Electric Guitar (muted)", "Overdriven Guitar", "Distortion Guitar", "Guitar Harmonics",
    "Acoustic Bass", "Electric Bass (finger)", "Electric Bass (pick)", "Fretless Bass", "Slap Bass 1",
    "Slap Bass 2", "Synth Bass 1", "Synth Bass 2",
    "Violin", "Viola", "Cello", "Contrabass", "Tremolo Strings", "Pizzicato Strings", "Orchestral Harp", "Timpani",
    "String Ensemble 1", "String Ensemble 2", "Synth Strings 1", "Synth Strings 2", "Choir Aahs", "Voice Oohs",
    "Synth Voice", "Orchestra Hit",
    "Trumpet", "Trombone", "Tuba", "Muted Trumpet", "French Horn", "Brass Section", "Synth Brass 1",
    "Synth Brass 2",
    "Soprano Sax", "Alto Sax", "Tenor Sax", "Baritone Sax", "Oboe", "English Horn", "Bassoon", "Clarinet",
    "Piccolo", "Flute", "Recorder", "Pan Flute", "Blown Bottle", "Shakuhachi", "Whistle", "Ocarina",
    "Lead 1 (square)", "Lead 2 (sawtooth)", "Lead 3 (calliope)", "Lead 4 (chiff)", "Lead 5 (charang)",
    "Lead 6 (voice)", "Lead 7 (fifths)", "Lead 8 (bass + lead)",
    "Pad 1 (new age)", "Pad 2 (warm)", "Pad 3 (polysynth)", "Pad 4 (choir)", "Pad 5 (bowed)", "Pad 6 (metallic)",
    "Pad 7 (halo)", "Pad 8 (sweep)",
    "FX 1 (rain)", "FX 2 (soundtrack)", "FX 3 (crystal)", "FX 4 (atmosphere)", "FX 5 (brightness)",
    "FX 6 (goblins)", "FX 7 (echoes)", "FX 8 (sci-fi)",
    "Sitar", "Banjo", "Shamisen", "Koto", "Kalimba", "Bagpipe", "Fiddle", "Shanai",
    "Tinkle Bell", "Agogo", "Steel Drums", "Woodblock", "Taiko Drum", "Melodic Tom", "Synth Drum",
    "Reverse Cymbal",
    "Guitar Fret Noise", "Breath Noise", "Seashore", "Bird Tweet", "Telephone Ring", "Helicopter", "Applause",
    "Gunshot",
)  # General MIDI Level 1 sound set, program numbers 0-127

# The default benchmark set: 16 orchestral/acoustic instruments close to SOL's
# classes, each with its natural range (MIDI notes, sounding pitch).
BENCHMARK_PROGRAMS = {
    0: (36, 96),  # Acoustic Grand Piano
    24: (40, 83),  # Acoustic Guitar (nylon)
    40: (55, 96),  # Violin
    42: (36, 76),  # Cello
    56: (54, 82),  # Trumpet
    57: (40, 72),  # Trombone
    60: (41, 77),  # French Horn
    58: (29, 65),  # Tuba
    73: (60, 96),  # Flute
    71: (50, 89),  # Clarinet
    68: (58, 91),  # Oboe
    70: (34, 75),  # Bassoon
    65: (49, 80),  # Alto Sax
    46: (36, 96),  # Orchestral Harp
    21: (53, 89),  # Accordion
    19: (36, 96),  # Church Organ
}

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Define the command-line flags (only when run as a tool, so importing this module defines none)."""
    flags.DEFINE_string("soundfont", DEFAULT_SOUNDFONT, "SoundFont (.sf2) to render.")
    flags.DEFINE_string("out_dir", None, "Directory to write the dataset to.")
    flags.DEFINE_list("programs", [str(p) for p in BENCHMARK_PROGRAMS], "General MIDI program numbers (0-127).")
    flags.DEFINE_integer("notes_per_program", 50, "Notes rendered per program.", lower_bound=1)
    flags.DEFINE_list("pitch_range", [], "Lowest,highest MIDI note for every program (default: natural ranges).")
    flags.DEFINE_list("velocities", ["40", "60", "80", "100", "120"], "MIDI velocities to draw from.")
    flags.DEFINE_list("durations", ["0.5", "1", "2"], "Hold durations (seconds, before note-off) to draw from.")
    flags.DEFINE_float("max_release", 3.0, "Longest release tail rendered after note-off (seconds).")
    flags.DEFINE_integer("sample_rate", 44100, "Sample rate in Hz (FluidSynth accepts 8000-96000).")
    flags.DEFINE_integer("seed", 0, "Seed of the note plan.")
    flags.DEFINE_boolean("overwrite", False, "Replace out_dir even if it holds something other than a rendering.")


class RenderError(RuntimeError):
    """A missing dependency or SoundFont, with the fix in the message."""


def slug(name: str) -> str:
    """File-system name in SOL style: 'Acoustic Guitar (nylon)' -> 'Acoustic-Guitar-nylon'."""
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")


def program_directory(program: int) -> str:
    """'<GM family>/<GM program name>' of a program, e.g. 40 -> 'Strings/Violin'."""
    return f"{slug(GM_FAMILIES[program // 8])}/{slug(GM_PROGRAM_NAMES[program])}"


@dataclasses.dataclass(frozen=True)
class Note:
    program: int
    midi_note: int
    velocity: int
    hold_s: float
    index: int

    @property
    def path(self) -> str:
        """Relative path, e.g. 'Strings/Violin/ordinario/Violin-C4-v80-0.wav'."""
        name = f"{slug(GM_PROGRAM_NAMES[self.program])}-{synth.note_name(self.midi_note)}-v{self.velocity}-{self.index}"
        return f"{program_directory(self.program)}/{TECHNIQUE}/{name}.wav"


def plan_notes(
    program: int,
    count: int,
    *,
    pitch_range: tuple[int, int] | None,
    velocities: list[int],
    durations: list[float],
    seed: int,
) -> list[Note]:
    """The notes of one program (see the module docstring); depends only on the arguments."""
    low, high = pitch_range or BENCHMARK_PROGRAMS.get(program, DEFAULT_PITCH_RANGE)
    rng = np.random.default_rng([seed, program])
    pitches = np.arange(low, high + 1)
    cycles = -(-count // len(pitches))
    order = np.concatenate([rng.permutation(pitches) for _ in range(cycles)])[:count]
    return [
        Note(
            program=program,
            midi_note=int(pitch),
            velocity=int(velocities[rng.integers(len(velocities))]),
            hold_s=float(durations[rng.integers(len(durations))]),
            index=index,
        )
        for index, pitch in enumerate(order)
    ]


def import_fluidsynth():
    """pyfluidsynth, or RenderError with the install commands (it also fails when libfluidsynth is missing)."""
    try:
        import fluidsynth
    except (ImportError, OSError) as error:
        raise RenderError(f"SoundFont rendering needs FluidSynth and pyfluidsynth ({error}); install: {INSTALL_HINT}")
    return fluidsynth


class SoundFontRenderer:
    """One offline FluidSynth instance with a SoundFont loaded; renders single notes on channel 0."""

    def __init__(self, soundfont: str, sample_rate: int, *, max_release_s: float = 3.0):
        if not os.path.isfile(soundfont):
            raise RenderError(f"SoundFont not found: {soundfont}; for FluidR3_GM.sf2 install: {INSTALL_HINT}")
        fluidsynth = import_fluidsynth()
        self.sample_rate = sample_rate
        self.max_release_s = max_release_s
        settings = {"synth.reverb.active": 0, "synth.chorus.active": 0}
        self._synth = fluidsynth.Synth(gain=SYNTH_GAIN, samplerate=float(sample_rate), **settings)
        self._sfid = self._synth.sfload(os.path.abspath(soundfont))
        if self._sfid < 0:
            self.close()
            raise RenderError(f"FluidSynth could not load the SoundFont {soundfont}")
        write_float = fluidsynth._fl.fluid_synth_write_float
        write_float.argtypes = [ctypes.c_void_p, ctypes.c_int] + [ctypes.c_void_p, ctypes.c_int, ctypes.c_int] * 2
        write_float.restype = ctypes.c_int
        self._write_float = write_float

    def close(self) -> None:
        self._synth.delete()

    def __enter__(self) -> "SoundFontRenderer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def preset_name(self, program: int) -> str | None:
        """The SoundFont's own name for a bank-0 program (None if it has no such preset)."""
        return self._synth.sfpreset_name(self._sfid, 0, program)

    def _render(self, num_samples: int) -> np.ndarray:
        left = np.zeros(num_samples, np.float32)
        right = np.zeros(num_samples, np.float32)
        status = self._write_float(self._synth.synth, num_samples, left.ctypes.data, 0, 1, right.ctypes.data, 0, 1)
        if status != 0:
            raise RuntimeError("fluid_synth_write_float failed")
        return 0.5 * (left + right)

    def render(self, note: Note) -> np.ndarray:
        """Mono float32 waveform of a note, release tail included and trailing silence trimmed (may be silent)."""
        if self._synth.program_select(0, self._sfid, 0, note.program) != 0:
            raise RenderError(f"the SoundFont has no bank-0 preset for program {note.program}")
        self._synth.noteon(0, note.midi_note, note.velocity)
        blocks = [self._render(int(round(note.hold_s * self.sample_rate)))]
        self._synth.noteoff(0, note.midi_note)
        block = int(round(BLOCK_S * self.sample_rate))
        peak = float(np.max(np.abs(blocks[0]), initial=0.0))
        for _ in range(int(np.ceil(self.max_release_s / BLOCK_S))):
            blocks.append(self._render(block))
            block_peak = float(np.max(np.abs(blocks[-1])))
            peak = max(peak, block_peak)
            if block_peak <= peak * 10.0 ** (TAIL_DB / 20.0):
                break
        self._synth.all_sounds_off(0)
        return trim_tail(np.concatenate(blocks), self.sample_rate)


def trim_tail(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Cut the samples after the last one above TAIL_DB (relative to the peak), keep FADE_S more and fade them out."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak == 0.0:
        return audio[:0]
    last = int(np.flatnonzero(np.abs(audio) > peak * 10.0 ** (TAIL_DB / 20.0))[-1])
    fade = int(round(FADE_S * sample_rate))
    audio = audio[: min(last + 1 + fade, audio.size)].copy()
    n = min(fade, audio.size)
    audio[audio.size - n :] *= 0.5 + 0.5 * np.cos(np.pi * np.arange(1, n + 1) / n)
    return audio


def is_previous_rendering(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, INFO_FILENAME))


def render_dataset(
    out_dir: str,
    *,
    soundfont: str,
    programs: list[int],
    notes_per_program: int,
    pitch_range: tuple[int, int] | None,
    velocities: list[int],
    durations: list[float],
    sample_rate: int,
    seed: int,
    max_release_s: float = 3.0,
    overwrite: bool = False,
) -> dict:
    """Render every planned note into `out_dir` (atomically, see data_tools.staging); returns the info dict."""
    for program in programs:
        if not 0 <= program < 128:
            raise ValueError(f"General MIDI programs are 0-127, got {program}")
    if pitch_range is not None and not 0 <= pitch_range[0] <= pitch_range[1] <= 127:
        raise ValueError(f"pitch_range must be two MIDI notes low <= high in 0-127, got {pitch_range}")
    if not velocities or not all(1 <= v <= 127 for v in velocities):
        raise ValueError(f"velocities must be in 1-127, got {velocities}")
    if not durations or not all(d > 0 for d in durations):
        raise ValueError(f"durations must be positive, got {durations}")
    with staged_directory(out_dir, overwrite=overwrite, is_previous_output=is_previous_rendering) as staging:
        with SoundFontRenderer(soundfont, sample_rate, max_release_s=max_release_s) as renderer:
            written, skipped, scaled, presets = 0, [], 0, {}
            for program in programs:
                presets[program] = renderer.preset_name(program)
                os.makedirs(os.path.join(staging, program_directory(program), TECHNIQUE), exist_ok=True)
                plan = plan_notes(program, notes_per_program, pitch_range=pitch_range, velocities=velocities,
                                  durations=durations, seed=seed)
                for note in plan:
                    audio = renderer.render(note)
                    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
                    if peak < SILENCE_PEAK:
                        logging.warning("Skipped silent note %s", note.path)
                        skipped.append({"path": note.path, "reason": f"silent (peak {peak:.1e})"})
                        continue
                    if peak > MAX_PEAK:
                        audio *= MAX_PEAK / peak
                        scaled += 1
                    write_wav(os.path.join(staging, note.path), audio, sample_rate)
                    written += 1
            info = {
                "tool": "data_tools.render_soundfont",
                "soundfont": os.path.abspath(soundfont),
                "sample_rate": sample_rate,
                "seed": seed,
                "notes_per_program": notes_per_program,
                "pitch_range": list(pitch_range) if pitch_range else "natural ranges (BENCHMARK_PROGRAMS)",
                "velocities": velocities,
                "durations": durations,
                "max_release_s": max_release_s,
                "synth_gain": SYNTH_GAIN,
                "programs": {
                    str(p): {"name": GM_PROGRAM_NAMES[p], "directory": program_directory(p), "preset": presets[p]}
                    for p in programs
                },
                "written": written,
                "scaled_to_max_peak": scaled,
                "skipped": skipped,
            }
            with open(os.path.join(staging, INFO_FILENAME), "w", encoding="utf-8") as f:
                json.dump(info, f, indent=2)
                f.write("\n")
    return info


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.pitch_range and len(FLAGS.pitch_range) != 2:
        raise app.UsageError("--pitch_range takes two MIDI notes: low,high")
    start = time.perf_counter()
    try:
        info = render_dataset(
            FLAGS.out_dir,
            soundfont=FLAGS.soundfont,
            programs=[int(p) for p in FLAGS.programs],
            notes_per_program=FLAGS.notes_per_program,
            pitch_range=tuple(int(p) for p in FLAGS.pitch_range) if FLAGS.pitch_range else None,
            velocities=[int(v) for v in FLAGS.velocities],
            durations=[float(d) for d in FLAGS.durations],
            sample_rate=FLAGS.sample_rate,
            seed=FLAGS.seed,
            max_release_s=FLAGS.max_release,
            overwrite=FLAGS.overwrite,
        )
    except (RenderError, FileExistsError, ValueError) as error:
        raise SystemExit(f"render_soundfont: {error}")
    logging.info("Wrote %d notes of %d programs to %s in %.1f s (%d silent notes skipped)", info["written"],
                 len(info["programs"]), FLAGS.out_dir, time.perf_counter() - start, len(info["skipped"]))


def run():
    """Console-script entry point (amych-render-soundfont)."""
    define_flags()
    flags.mark_flag_as_required("out_dir")
    app.run(main)


if __name__ == "__main__":
    run()
