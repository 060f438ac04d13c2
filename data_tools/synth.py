"""Additive synthesis of the demo instruments (pure NumPy, no I/O).

The demo dataset (`python -m data_tools.make_demo`) needs classes that a
prototype model with gain, pitch-shift and spectral-tilt transformations can
learn, but that the time-averaged log-Mel spectrum alone does not separate
trivially. Decisions that follow from that:

* **Timbre is defined relative to the partials.** Each instrument's spectral
  envelope is a function of the partial number h (rolloff in dB per doubling of
  h, a boost of even partials, Gaussian bumps on log2 h, missing partials), not
  of frequency in Hz. A pitch shift of the whole spectrum (the model's
  transformation, a true frequency ratio) therefore maps one note of an
  instrument onto another, while the log-Mel of the same instrument at
  different pitches differs a lot.
* **Nuisances the model can undo blur the mean spectra.** Every clip draws a
  pitch over the instrument's two octaves (ranges overlap across instruments),
  a dynamic level spanning 16 dB, a random spectral tilt (dB per octave around
  1 kHz, i.e. a "microphone colour" the model's low/high filters can absorb),
  and a small per-partial level jitter (natural variation of one note to the
  next).
* **Temporal shape and noise are part of timbre**: attack/decay/release
  envelopes, faster decay of high partials for struck/plucked sounds, vibrato,
  a slight inharmonicity and breath/bow noise shaped by the same envelope as
  the partials.

`Instrument` describes one timbre, `INSTRUMENTS` is the table of the eight
demo instruments, `draw_clip` draws one clip's random parameters from a NumPy
Generator and `render_clip` turns them into a waveform. All functions are pure:
the same Generator state gives the same clip, bit for bit, with the same NumPy
on the same machine (math libraries may round differently elsewhere).
"""

from __future__ import annotations

import dataclasses

import numpy as np

NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
# Dynamic markings and their peak level in dBFS (a 16 dB span).
DYNAMICS = (("pp", -21.0), ("p", -17.0), ("mf", -13.0), ("f", -9.0), ("ff", -5.0))
RANGE_SEMITONES = 24  # every instrument plays two octaves
MIN_DURATION_S = 0.5
MAX_DURATION_S = 2.0
MAX_TILT_DB_PER_OCTAVE = 3.0  # random spectral tilt around TILT_PIVOT_HZ
TILT_PIVOT_HZ = 1000.0
PARTIAL_JITTER_DB = 1.5  # standard deviation of the per-partial level jitter
MAX_DETUNE_CENTS = 20.0
PARTIAL_FLOOR_DB = -80.0  # partials quieter than this (relative to the loudest) are not rendered
NYQUIST_MARGIN = 0.45  # partials are kept below this fraction of the sample rate (vibrato headroom)


@dataclasses.dataclass(frozen=True)
class Instrument:
    """One synthetic timbre.

    Spectral envelope of partial number h (in dB, before the clip's random
    nuisances): `rolloff_db * log2(h) + even_db * [h even] + sum of bumps`,
    where a bump (centre, width, gain) adds `gain * exp(-0.5 * ((log2 h -
    log2 centre) / width)^2)`. `pluck_position` p multiplies partial h by
    |sin(pi h p)| (a plucked string misses the partials with a node at the
    plucking point); `only_partials` keeps just those partial numbers (organ
    drawbars); `partial_ratios` replaces the harmonic series (tuned bars).
    """

    name: str
    description: str
    lowest_note: int  # MIDI note; the range is [lowest_note, lowest_note + RANGE_SEMITONES]
    rolloff_db: float  # dB per doubling of the partial number
    even_db: float = 0.0
    bumps: tuple[tuple[float, float, float], ...] = ()
    pluck_position: float | None = None
    only_partials: tuple[int, ...] | None = None
    partial_ratios: tuple[float, ...] | None = None
    inharmonicity: float = 0.0  # B of stiff strings: partial h at h * sqrt(1 + B h^2) * f0
    attack_s: float = 0.03
    decay_db_per_s: float = 0.0  # level decay while the note is held
    partial_decay_db_per_s: float = 0.0  # extra decay per partial number above 1
    release_s: float = 0.08
    vibrato_cents: float = 0.0
    vibrato_hz: float = 5.0
    noise_db: float = -60.0  # noise RMS relative to the partials' RMS

    @property
    def highest_note(self) -> int:
        return self.lowest_note + RANGE_SEMITONES

    def partial_numbers(self, f0: float, sample_rate: int) -> np.ndarray:
        """Partial numbers h (1-based, float64) whose frequency stays below NYQUIST_MARGIN * sample_rate."""
        limit = NYQUIST_MARGIN * sample_rate
        if self.partial_ratios is not None:
            ratios = np.asarray(self.partial_ratios, dtype=np.float64)
            return ratios[ratios * f0 < limit]
        numbers = np.arange(1, int(limit // f0) + 1, dtype=np.float64)
        if self.only_partials is not None:
            numbers = numbers[np.isin(numbers, self.only_partials)]
        return numbers[self.frequency_ratios(numbers) * f0 < limit]

    def frequency_ratios(self, numbers: np.ndarray) -> np.ndarray:
        """Frequency of each partial in units of f0 (inharmonicity applied)."""
        numbers = np.asarray(numbers, dtype=np.float64)
        return numbers * np.sqrt(1.0 + self.inharmonicity * numbers**2)

    def envelope_db(self, numbers: np.ndarray) -> np.ndarray:
        """Smooth spectral envelope (dB) at partial numbers, continuous in h (also shapes the noise)."""
        log_h = np.log2(np.maximum(np.asarray(numbers, dtype=np.float64), 1e-3))
        level = self.rolloff_db * log_h
        for centre, width, gain in self.bumps:
            level = level + gain * np.exp(-0.5 * ((log_h - np.log2(centre)) / width) ** 2)
        return level

    def partial_levels_db(self, numbers: np.ndarray) -> np.ndarray:
        """Level (dB) of each partial: the smooth envelope, the even boost and the plucking comb."""
        numbers = np.asarray(numbers, dtype=np.float64)
        level = self.envelope_db(numbers)
        if self.partial_ratios is None:
            level = level + self.even_db * (numbers % 2 == 0)
        if self.pluck_position is not None:
            comb = np.abs(np.sin(np.pi * numbers * self.pluck_position))
            level = level + 20.0 * np.log10(np.maximum(comb, 1e-4))
        return level


# The eight demo instruments. Ranges overlap (MIDI 45-81, A2-A5) so that pitch
# does not give the class away; timbres differ in partial structure.
INSTRUMENTS: tuple[Instrument, ...] = (
    Instrument(
        name="Reed",
        description="clarinet-like: odd partials, even ones 20 dB down, breathy",
        lowest_note=50, rolloff_db=-5.0, even_db=-20.0,
        attack_s=0.04, release_s=0.08, noise_db=-28.0,
    ),
    Instrument(
        name="Brass",
        description="brass-like: partials rise to a peak at the 3rd-4th, slow attack, slight vibrato",
        lowest_note=45, rolloff_db=-14.0, bumps=((4.0, 0.7, 30.0),),
        attack_s=0.08, release_s=0.1, vibrato_cents=6.0, vibrato_hz=5.0, noise_db=-42.0,
    ),
    Instrument(
        name="Flute",
        description="flute-like: strong fundamental, steep rolloff, loud breath noise, vibrato",
        lowest_note=57, rolloff_db=-13.0, even_db=3.0,
        attack_s=0.06, release_s=0.1, vibrato_cents=15.0, vibrato_hz=5.0, noise_db=-16.0,
    ),
    Instrument(
        name="Bowed",
        description="bowed-string-like: sawtooth rolloff with body resonances at partials 3 and 9, vibrato, bow noise",
        lowest_note=48, rolloff_db=-6.0, bumps=((3.0, 0.25, 8.0), (9.0, 0.25, 8.0)),
        attack_s=0.12, release_s=0.12, vibrato_cents=20.0, vibrato_hz=5.5, noise_db=-32.0,
    ),
    Instrument(
        name="Pluck",
        description="plucked-string-like: plucked at 1/5 of the string (every 5th partial missing), decaying",
        lowest_note=45, rolloff_db=-6.0, pluck_position=0.2, inharmonicity=1e-4,
        attack_s=0.004, decay_db_per_s=12.0, partial_decay_db_per_s=3.0, release_s=0.05, noise_db=-50.0,
    ),
    Instrument(
        name="Nasal",
        description="double-reed-like: weak fundamental, formant peak around partials 4-6",
        lowest_note=55, rolloff_db=-8.0, bumps=((5.0, 0.5, 24.0),),
        attack_s=0.05, release_s=0.08, vibrato_cents=8.0, vibrato_hz=5.5, noise_db=-34.0,
    ),
    Instrument(
        name="Organ",
        description="organ-like: drawbars 1, 2, 3, 4, 6, 8 only, instant attack, steady",
        lowest_note=48, rolloff_db=-4.0, only_partials=(1, 2, 3, 4, 6, 8),
        attack_s=0.01, release_s=0.03, noise_db=-55.0,
    ),
    Instrument(
        name="Mallet",
        description="marimba-like tuned bar: partials at 1, 4 and 10 times f0, struck and decaying",
        lowest_note=52, rolloff_db=-4.0, partial_ratios=(1.0, 4.0, 10.0),
        attack_s=0.002, decay_db_per_s=18.0, partial_decay_db_per_s=2.0, release_s=0.05, noise_db=-45.0,
    ),
)


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """The random parameters of one clip (drawn by `draw_clip`)."""

    midi_note: int
    detune_cents: float
    dynamic: str
    peak_dbfs: float
    duration_s: float
    tilt_db_per_octave: float
    seed: int  # of the clip's phases, jitter and noise

    @property
    def f0(self) -> float:
        return midi_to_hz(self.midi_note + self.detune_cents / 100.0)

    @property
    def note_name(self) -> str:
        return note_name(self.midi_note)


def midi_to_hz(note: float) -> float:
    return 440.0 * 2.0 ** ((note - 69.0) / 12.0)


def note_name(midi_note: int) -> str:
    """Scientific pitch notation, e.g. 57 -> 'A3', 61 -> 'C#4'."""
    return f"{NOTE_NAMES[midi_note % 12]}{midi_note // 12 - 1}"


def draw_clip(instrument: Instrument, rng: np.random.Generator) -> ClipSpec:
    """Draw one clip's pitch, loudness, duration and colour (uniform over the documented ranges)."""
    midi_note = int(rng.integers(instrument.lowest_note, instrument.highest_note + 1))
    dynamic, level = DYNAMICS[int(rng.integers(len(DYNAMICS)))]
    return ClipSpec(
        midi_note=midi_note,
        detune_cents=float(rng.uniform(-MAX_DETUNE_CENTS, MAX_DETUNE_CENTS)),
        dynamic=dynamic,
        peak_dbfs=level + float(rng.uniform(-1.0, 1.0)),
        duration_s=float(rng.uniform(MIN_DURATION_S, MAX_DURATION_S)),
        tilt_db_per_octave=float(rng.uniform(-MAX_TILT_DB_PER_OCTAVE, MAX_TILT_DB_PER_OCTAVE)),
        seed=int(rng.integers(2**32)),
    )


def amplitude_envelope(instrument: Instrument, num_samples: int, sample_rate: int) -> np.ndarray:
    """Raised-cosine attack, exponential decay while held, raised-cosine release ending at the last sample."""
    t = np.arange(num_samples) / sample_rate
    attack = np.clip(t / instrument.attack_s, 0.0, 1.0)
    envelope = 0.5 - 0.5 * np.cos(np.pi * attack)
    envelope *= 10.0 ** (-instrument.decay_db_per_s * t / 20.0)
    release_samples = min(int(round(instrument.release_s * sample_rate)), num_samples // 2)
    fade = 0.5 + 0.5 * np.cos(np.pi * np.arange(1, release_samples + 1) / release_samples)
    envelope[num_samples - release_samples :] *= fade
    return envelope


def render_clip(instrument: Instrument, spec: ClipSpec, sample_rate: int) -> np.ndarray:
    """Waveform (float32, peak at `spec.peak_dbfs`) of one note of `instrument`.

    Partials: sinusoids with random phases at `frequency_ratios(h) * f0(t)`
    (f0(t) carries the vibrato), levels from `partial_levels_db` plus a
    Gaussian per-partial jitter, each decaying at `decay_db_per_s +
    partial_decay_db_per_s * (h - 1)`. Noise: white noise shaped in frequency
    by `envelope_db(f / f0)` (nothing below half the fundamental), at
    `noise_db` relative to the partials, following the amplitude envelope.
    The random tilt is applied to the mix in the frequency domain, then the
    clip is scaled to its peak level.
    """
    rng = np.random.default_rng(spec.seed)
    num_samples = int(round(spec.duration_s * sample_rate))
    t = np.arange(num_samples) / sample_rate
    f0 = spec.f0

    numbers = instrument.partial_numbers(f0, sample_rate)
    levels_db = instrument.partial_levels_db(numbers) + rng.normal(0.0, PARTIAL_JITTER_DB, numbers.shape)
    keep = levels_db >= levels_db.max() + PARTIAL_FLOOR_DB
    numbers, levels_db = numbers[keep], levels_db[keep]
    phases = rng.uniform(0.0, 2.0 * np.pi, numbers.shape)

    vibrato_phase = rng.uniform(0.0, 2.0 * np.pi)
    cents = instrument.vibrato_cents * np.sin(2.0 * np.pi * instrument.vibrato_hz * t + vibrato_phase)
    instantaneous_f0 = f0 * 2.0 ** (cents / 1200.0)
    base_phase = 2.0 * np.pi * np.cumsum(instantaneous_f0) / sample_rate

    ratios = instrument.frequency_ratios(numbers) if instrument.partial_ratios is None else numbers
    sines = np.sin(ratios[:, None] * base_phase[None, :] + phases[:, None])
    gains = 10.0 ** (levels_db / 20.0)[:, None]
    if instrument.partial_decay_db_per_s:
        decay_db = instrument.partial_decay_db_per_s * (numbers - 1.0)[:, None] * t[None, :]
        gains = gains * 10.0 ** (-decay_db / 20.0)
    # A plain sum in a fixed order (not BLAS, whose summation order may depend on threads).
    partials = np.sum(gains * sines, axis=0)

    # Filtering in the frequency domain, zero-padded to a power of two (fast, no wrap-around).
    fft_size = 1 << (num_samples - 1).bit_length()
    frequencies = np.fft.rfftfreq(fft_size, 1.0 / sample_rate)
    relative = frequencies / f0
    noise_shape = 10.0 ** (instrument.envelope_db(relative) / 20.0) * (relative >= 0.5)
    noise = np.fft.irfft(np.fft.rfft(rng.standard_normal(fft_size)) * noise_shape)[:num_samples]
    partials_rms = np.sqrt(np.mean(partials**2))
    noise *= 10.0 ** (instrument.noise_db / 20.0) * partials_rms / max(np.sqrt(np.mean(noise**2)), 1e-12)

    mix = (partials + noise) * amplitude_envelope(instrument, num_samples, sample_rate)
    tilt_db = spec.tilt_db_per_octave * np.log2(np.maximum(frequencies, 20.0) / TILT_PIVOT_HZ)
    mix = np.fft.irfft(np.fft.rfft(mix, n=fft_size) * 10.0 ** (tilt_db / 20.0))[:num_samples]
    mix *= 10.0 ** (spec.peak_dbfs / 20.0) / np.max(np.abs(mix))
    return mix.astype(np.float32)
