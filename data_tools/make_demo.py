"""Write the embedded synthetic demo dataset (no downloads).

    python -m data_tools.make_demo --out_dir=DIR [--clips_per_class=60] [--seed=0] [--sample_rate=16000]

Eight instruments of `data_tools.synth` in the SOL layout
`Synth/<Instrument>/ordinario/<Instrument>-<note>-<dynamic>-<index>.wav`
(16-bit mono WAV) plus `README.txt` describing the instruments and the seed.

Decisions:

* Clip `i` of instrument `c` draws from its own generator seeded with
  `(seed, c, i)`, so a run is deterministic (same seed, byte-identical files)
  and a smaller run is a prefix of a larger one.
* Writing is atomic (`data_tools.staging`): everything goes to a temporary
  directory beside `out_dir` that is renamed into place at the end. An existing
  `out_dir` is replaced only if it is empty, is a previous demo (its README.txt
  starts with `README_SIGNATURE`), or `--overwrite` is given.
* Samples are quantised by rounding `x * 32767`, so the peak stays below 1.
"""

from __future__ import annotations

import os
import time

import numpy as np
import soundfile as sf
from absl import app, flags, logging

from data_tools import synth
from data_tools.staging import staged_directory

FAMILY = "Synth"
TECHNIQUE = "ordinario"
README_FILENAME = "README.txt"
README_SIGNATURE = "amych_tf synthetic demo dataset"

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Define the command-line flags (only when run as a tool, so importing this module defines none)."""
    flags.DEFINE_string("out_dir", None, "Directory to write the dataset to.")
    flags.DEFINE_integer("clips_per_class", 60, "Clips per instrument.", lower_bound=1)
    flags.DEFINE_integer("seed", 0, "Seed of every random choice; same seed, same bytes.")
    flags.DEFINE_integer("sample_rate", 16000, "Sample rate in Hz (the demo uses the 'librispeech' feature preset).")
    flags.DEFINE_boolean("overwrite", False, "Replace out_dir even if it holds something other than a demo.")


def clip_path(instrument: synth.Instrument, spec: synth.ClipSpec, index: int) -> str:
    """Relative path of a clip, e.g. 'Synth/Reed/ordinario/Reed-A3-mf-017.wav'."""
    name = f"{instrument.name}-{spec.note_name}-{spec.dynamic}-{index:03d}.wav"
    return os.path.join(FAMILY, instrument.name, TECHNIQUE, name)


def readme_text(clips_per_class: int, seed: int, sample_rate: int) -> str:
    lines = [
        f"{README_SIGNATURE} (python -m data_tools.make_demo)",
        "",
        f"seed={seed} clips_per_class={clips_per_class} sample_rate={sample_rate} "
        "format=WAV PCM 16-bit mono",
        f"layout: {FAMILY}/<Instrument>/{TECHNIQUE}/<Instrument>-<note>-<dynamic>-<index>.wav",
        "",
        "Every clip is one note of additive synthesis (data_tools/synth.py):",
        f"  pitch: uniform MIDI note over the instrument's two octaves, detuned by up to "
        f"+-{synth.MAX_DETUNE_CENTS:g} cents",
        "  loudness: peak level " + ", ".join(f"{name} {level:g}" for name, level in synth.DYNAMICS)
        + " dBFS, +-1 dB",
        f"  duration: uniform in [{synth.MIN_DURATION_S:g}, {synth.MAX_DURATION_S:g}] s",
        f"  colour: spectral tilt uniform in +-{synth.MAX_TILT_DB_PER_OCTAVE:g} dB/octave around "
        f"{synth.TILT_PIVOT_HZ:g} Hz; per-partial level jitter {synth.PARTIAL_JITTER_DB:g} dB (s.d.)",
        "",
        "Instruments (class = Family/Instrument; the timbre, not the pitch, identifies the class):",
    ]
    for instrument in synth.INSTRUMENTS:
        low, high = synth.note_name(instrument.lowest_note), synth.note_name(instrument.highest_note)
        lines.append(f"  {FAMILY}/{instrument.name:<7} {low}-{high:<4} {instrument.description}")
    return "\n".join(lines) + "\n"


def write_wav(path: str, audio: np.ndarray, sample_rate: int) -> None:
    """16-bit PCM WAV of float audio in [-1, 1] (rounded, so a peak of 1 stays below full scale)."""
    samples = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)
    sf.write(path, samples, sample_rate, subtype="PCM_16", format="WAV")


def generate(directory: str, *, clips_per_class: int, seed: int, sample_rate: int) -> int:
    """Write every clip and README.txt into `directory` (which must exist); returns the number of clips."""
    count = 0
    for class_index, instrument in enumerate(synth.INSTRUMENTS):
        os.makedirs(os.path.join(directory, FAMILY, instrument.name, TECHNIQUE), exist_ok=True)
        for index in range(clips_per_class):
            spec = synth.draw_clip(instrument, np.random.default_rng([seed, class_index, index]))
            audio = synth.render_clip(instrument, spec, sample_rate)
            write_wav(os.path.join(directory, clip_path(instrument, spec, index)), audio, sample_rate)
            count += 1
    with open(os.path.join(directory, README_FILENAME), "w", encoding="utf-8") as f:
        f.write(readme_text(clips_per_class, seed, sample_rate))
    return count


def is_previous_demo(directory: str) -> bool:
    try:
        with open(os.path.join(directory, README_FILENAME), encoding="utf-8") as f:
            return f.readline().startswith(README_SIGNATURE)
    except OSError:
        return False


def make_demo(out_dir: str, *, clips_per_class: int = 60, seed: int = 0, sample_rate: int = 16000,
              overwrite: bool = False) -> int:
    """Generate the demo dataset into `out_dir` atomically; returns the number of clips."""
    with staged_directory(out_dir, overwrite=overwrite, is_previous_output=is_previous_demo) as staging:
        return generate(staging, clips_per_class=clips_per_class, seed=seed, sample_rate=sample_rate)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    start = time.perf_counter()
    count = make_demo(FLAGS.out_dir, clips_per_class=FLAGS.clips_per_class, seed=FLAGS.seed,
                      sample_rate=FLAGS.sample_rate, overwrite=FLAGS.overwrite)
    logging.info("Wrote %d clips of %d instruments to %s in %.1f s", count, len(synth.INSTRUMENTS),
                 FLAGS.out_dir, time.perf_counter() - start)


def run():
    """Console-script entry point (amych-make-demo)."""
    define_flags()
    flags.mark_flag_as_required("out_dir")
    app.run(main)


if __name__ == "__main__":
    run()
