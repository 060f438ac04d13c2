"""Finding the audio files and classes of a collection, per directory layout.

Layouts (paths relative to the audio directory):
  sol          <Family>/<Instrument>/<technique>/<name>.wav; class "Family/Instrument".
               Files at any depth below <Family>/<Instrument>/ count for it.
               Classes: the paper's 33 (SOL_PAPER_CLASSES, in that label order)
               or every Family/Instrument found, sorted ("discovered").
  librispeech  <speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac; class = speaker id.
               Which speakers are kept (the N with the most audio) is decided by
               `rank_speakers` once durations are known.
  folders      <class>/**/<file>; one sub-folder per class, sorted names = labels.

Decisions: paths are relative, '/'-separated and sorted as strings, so the
result does not depend on the order the filesystem lists entries. Hidden
files and folders (names starting with '.', e.g. macOS "._x.wav" resource
forks) are not looked at. Symbolic links are followed (collections are often
assembled from links), each real folder is visited once so link cycles end. Audio files that fall outside
the layout or outside the kept classes are counted as ignored and reported in
`Discovery.warnings`; they are not "skipped" (skipping is for files that are
meant to be used but cannot be read).
"""

from __future__ import annotations

import dataclasses
import os
import re

from data_tools.audio import AUDIO_EXTENSIONS, is_audio_filename

LAYOUTS = ("sol", "librispeech", "folders")
# Feature preset (amych_tf.spectral.PRESETS) used when --preset is not given.
DEFAULT_PRESETS = {"sol": "sol", "librispeech": "librispeech", "folders": "sol"}
LAYOUT_DESCRIPTIONS = {
    "sol": "<Family>/<Instrument>/<technique>/<name>.wav",
    "librispeech": "<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac (point --audio_dir at e.g. train-clean-360/)",
    "folders": "<class>/.../<file>, one sub-folder per class",
}
SOL_CLASS_CHOICES = ("paper", "discovered")
# docs/DESIGN.md, section 2.1: the 33 SOL classes of the paper, in label order.
SOL_PAPER_CLASSES = (
    "PluckedStrings/Guitar", "PluckedStrings/Harp", "Bassoons/Bassoon", "Saxophones/Alto-Sax",
    "Flutes/Flute", "Tubas/Bass-Tuba", "Trumpets/Trumpet-C-wah", "Trumpets/Trumpet-C-cup",
    "Trumpets/Trumpet-C-harmon", "Trumpets/Trumpet-C-straight", "Trumpets/Trumpet-C",
    "Horns/Horn-sordina", "Horns/Horn", "Trombones/Tenor-Trombone-straight",
    "Trombones/Tenor-Trombone-cup", "Trombones/Tenor-Trombone-wah",
    "Trombones/Tenor-Trombone-harmon", "Trombones/Tenor-Trombone", "Strings/Violin",
    "Strings/Violoncello-sordina", "Strings/Contrabass", "Strings/Viola-sordina",
    "Strings/Contrabass-sordina", "Strings/Violoncello", "Strings/Viola-sordina-piombo",
    "Strings/Violoncello-sordina-piombo", "Strings/Viola", "Strings/Violin-sordina-piombo",
    "Strings/Violin-sordina", "Keyboards/Accordion", "Oboes/Oboe", "Oboes/Oboe-sordina",
    "Clarinets/Clarinet-Bb",
)
# A note name token of a file name: letter, optional sharp/flat, octave (scientific pitch, C4 = 60).
_NOTE_TOKEN = re.compile(r"^([A-Ga-g])([#b]?)(\d)$")
# A plain MIDI note number token: two or three digits, no leading zero (an index such as "017"
# or a take number "3" is not a note), within the piano's range (PLAIN_MIDI_RANGE).
_MIDI_TOKEN = re.compile(r"^[1-9]\d{1,2}$")
PLAIN_MIDI_RANGE = (21, 108)
_PITCH_CLASSES = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
# Class names listed in full in a warning before it is shortened.
MAX_NAMES_IN_WARNING = 10


@dataclasses.dataclass
class Discovery:
    """The classes of a collection and their audio files."""

    class_names: list[str]  # label order
    files: dict[str, list[str]]  # class name -> sorted relative paths
    num_ignored: int = 0  # audio files outside the layout or the kept classes
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def num_files(self) -> int:
        return sum(len(paths) for paths in self.files.values())

    def keep(self, class_names: list[str]) -> "Discovery":
        """Only `class_names`, in that label order; the files of the others become ignored."""
        kept = {name: self.files[name] for name in class_names}
        num_dropped = self.num_files - sum(len(paths) for paths in kept.values())
        return Discovery(list(class_names), kept, self.num_ignored + num_dropped, list(self.warnings))


def midi_note_from_filename(path: str) -> int:
    """The MIDI note a file name announces, -1 if none.

    The name (without folders and extension) is cut at '-' and '_'. The first
    token that is a note name counts: SOL's `Vn-ord-A#3-ff-4c-N.wav` -> A#3 = 58
    (scientific pitch: C4 = 60, A4 = 69; '#' and 'b' accepted). Failing that,
    the first plain MIDI number: a token of two or three digits without a
    leading zero within the piano's range 21-108 (`Flute-60-mf.wav` -> 60).
    The restrictions keep take numbers and indices from passing for notes:
    `note-3.wav` and `Reed-mf-017.wav` announce none.
    """
    stem = os.path.splitext(path.replace("\\", "/").rsplit("/", 1)[-1])[0]
    tokens = re.split(r"[-_]", stem)
    for token in tokens:
        match = _NOTE_TOKEN.match(token)
        if match:
            letter, accidental, octave = match.groups()
            offset = {"#": 1, "b": -1, "": 0}[accidental]
            note = 12 * (int(octave) + 1) + _PITCH_CLASSES[letter.upper()] + offset
            if 0 <= note <= 127:
                return note
    for token in tokens:
        if _MIDI_TOKEN.match(token) and PLAIN_MIDI_RANGE[0] <= int(token) <= PLAIN_MIDI_RANGE[1]:
            return int(token)
    return -1


def list_audio_files(audio_dir: str) -> list[str]:
    """Sorted '/'-separated paths, relative to `audio_dir`, of its audio files (any depth)."""
    found = []
    visited = set()
    for root, dirs, files in os.walk(audio_dir, followlinks=True):
        status = os.stat(root)
        if (status.st_dev, status.st_ino) in visited:
            dirs[:] = []
            continue
        visited.add((status.st_dev, status.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # sorted: deterministic walk
        relative_root = os.path.relpath(root, audio_dir)
        prefix = "" if relative_root == "." else relative_root.replace(os.sep, "/") + "/"
        found.extend(prefix + name for name in files if not name.startswith(".") and is_audio_filename(name))
    return sorted(found)


def _names(names) -> str:
    names = list(names)
    shown = ", ".join(names[:MAX_NAMES_IN_WARNING])
    return shown + (f" and {len(names) - MAX_NAMES_IN_WARNING} more" if len(names) > MAX_NAMES_IN_WARNING else "")


def _group(paths: list[str], class_of) -> tuple[dict[str, list[str]], int]:
    """Group paths by `class_of(parts)` (None = outside the layout); returns (groups, number outside)."""
    groups: dict[str, list[str]] = {}
    outside = 0
    for path in paths:
        name = class_of(path.split("/"))
        if name is None:
            outside += 1
        else:
            groups.setdefault(name, []).append(path)
    return groups, outside


def _outside_warning(layout: str, count: int) -> list[str]:
    if not count:
        return []
    return [f"ignored {count} audio file(s) outside the {layout} layout {LAYOUT_DESCRIPTIONS[layout]}"]


def discover_sol(audio_dir: str, sol_classes: str = "paper") -> Discovery:
    """SOL classes: the paper's 33 (missing ones reported) or all found ("discovered")."""
    if sol_classes not in SOL_CLASS_CHOICES:
        raise ValueError(f"sol_classes must be one of {SOL_CLASS_CHOICES}, got {sol_classes!r}")
    groups, outside = _group(
        list_audio_files(audio_dir), lambda parts: "/".join(parts[:2]) if len(parts) >= 3 else None
    )
    discovery = Discovery(sorted(groups), groups, outside, _outside_warning("sol", outside))
    if sol_classes == "discovered":
        return discovery
    present = [name for name in SOL_PAPER_CLASSES if name in groups]
    missing = [name for name in SOL_PAPER_CLASSES if name not in groups]
    others = sorted(set(groups) - set(SOL_PAPER_CLASSES))
    if missing:
        discovery.warnings.append(
            f"{len(missing)} of the {len(SOL_PAPER_CLASSES)} paper SOL classes have no audio files "
            f"and are left out: {_names(missing)}"
        )
    if others:
        discovery.warnings.append(
            f"ignored {sum(len(groups[name]) for name in others)} audio file(s) of {len(others)} folder(s) "
            f"that are not paper SOL classes (use --sol_classes=discovered to keep them): {_names(others)}"
        )
    return discovery.keep(present)


def discover_librispeech(audio_dir: str) -> Discovery:
    """Every LibriSpeech speaker with audio, in speaker-id order (ranked later by `rank_speakers`)."""
    groups, outside = _group(
        list_audio_files(audio_dir), lambda parts: parts[0] if len(parts) == 3 and parts[0].isdigit() else None
    )
    return Discovery(sorted(groups, key=int), groups, outside, _outside_warning("librispeech", outside))


def discover_folders(audio_dir: str) -> Discovery:
    """One class per sub-folder holding audio; sub-folders without any are reported and ignored."""
    groups, outside = _group(list_audio_files(audio_dir), lambda parts: parts[0] if len(parts) >= 2 else None)
    discovery = Discovery(sorted(groups), groups, outside, _outside_warning("folders", outside))
    empty_folders = sorted(
        entry.name
        for entry in os.scandir(audio_dir)
        if entry.is_dir() and not entry.name.startswith(".") and entry.name not in groups
    )
    if empty_folders:
        discovery.warnings.append(
            f"ignored {len(empty_folders)} sub-folder(s) without audio files ({', '.join(AUDIO_EXTENSIONS)}): "
            f"{_names(empty_folders)}"
        )
    return discovery


def discover(layout: str, audio_dir: str, *, sol_classes: str = "paper") -> Discovery:
    """Classes and files of `audio_dir` in `layout` (one of LAYOUTS)."""
    if layout == "sol":
        return discover_sol(audio_dir, sol_classes)
    if layout == "librispeech":
        return discover_librispeech(audio_dir)
    if layout == "folders":
        return discover_folders(audio_dir)
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def rank_speakers(durations: dict[str, float], num_classes: int) -> list[str]:
    """The `num_classes` speakers with the most total audio, most first; ties by numeric speaker id."""
    return sorted(durations, key=lambda speaker: (-durations[speaker], int(speaker)))[:num_classes]
