"""Render note lists with a General MIDI SoundFont (tinysoundfont: SF2 synthesis in C, no system library).

The default SoundFont is the 6 MB ``TimGM6mb.sf2`` that pretty_midi's wheel ships; ``--soundfont PATH`` renders with
any SF2 (e.g. Debian's FluidR3_GM.sf2 for better samples).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

# GM programs (0-based) per instrument family, one per voice from the top voice down; a solo line uses the first.
FAMILY_PROGRAMS: dict[str, tuple[int, ...]] = {
    "piano": (0, 0, 0, 0),             # acoustic grand
    "organ": (19, 19, 19, 19),         # church organ
    "strings": (40, 40, 41, 42),       # violin, violin, viola, cello
    "woodwind": (73, 68, 71, 70),      # flute, oboe, clarinet, bassoon
    "brass": (56, 60, 57, 58),         # trumpet, French horn, trombone, tuba
    "guitar": (24, 24, 24, 24),        # nylon-string guitar
}
_DRUM_CHANNEL = 9  # GM channel 10 plays percussion whatever its program; voices skip it


class SoundFontError(ValueError):
    """A SoundFont path that is missing or not an SF2 file; the message names it."""


@dataclass(frozen=True)
class Note:
    """One note to render."""

    start_s: float
    end_s: float
    pitch: int
    """MIDI note number."""
    voice: int = 0
    """0 = top voice; picks the program within the family and the MIDI channel."""
    velocity: int = 90


def default_soundfont() -> str:
    """The SF2 that the install provides (pretty_midi's TimGM6mb.sf2)."""
    try:
        import pretty_midi
    except ImportError:
        raise SoundFontError("no default SoundFont: pretty_midi is not installed (pip install pretty_midi, or "
                             "`make` which installs the music extra), or pass --soundfont PATH") from None
    return os.path.join(os.path.dirname(pretty_midi.__file__), "TimGM6mb.sf2")


def check_soundfont(path: str | os.PathLike) -> str:
    """``path`` as a string if it is a readable SF2 (a RIFF file of form ``sfbk``); SoundFontError otherwise."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SoundFontError(f"--soundfont {path!r}: no such file")
    with open(path, "rb") as f:
        head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"sfbk":
        raise SoundFontError(f"--soundfont {path!r} is not a SoundFont 2 file (no RIFF/sfbk header)")
    return path


class Renderer:
    """One loaded SoundFont; renders note lists to mono float32 audio. Not thread-safe (one synth)."""

    def __init__(self, soundfont: str | os.PathLike | None = None, sample_rate: int = 16000):
        import tinysoundfont  # optional extra (divcfg[music])

        self.soundfont = check_soundfont(soundfont if soundfont is not None else default_soundfont())
        self.sample_rate = sample_rate
        self.synth = tinysoundfont.Synth(samplerate=sample_rate)
        try:
            self.sfid = self.synth.sfload(self.soundfont)
        except Exception as e:  # tinysoundfont raises its own exception types for unreadable files
            raise SoundFontError(f"--soundfont {self.soundfont!r} could not be loaded: {e}") from None

    def _generate(self, n: int) -> np.ndarray:
        if n <= 0:
            return np.zeros(0, np.float32)
        stereo = np.frombuffer(self.synth.generate(n), dtype=np.float32).reshape(n, 2)
        return stereo.mean(axis=1)

    def render(self, notes: list[Note], family: str, duration_s: float) -> np.ndarray:
        """float32 ``[round(duration_s * sample_rate)]``: ``notes`` played by ``family``, peak-normalised to 0.9.

        Notes still sounding at the end are cut; silence stays silence (all zeros)."""
        if family not in FAMILY_PROGRAMS:
            raise ValueError(f"unknown instrument family {family!r}; known: {list(FAMILY_PROGRAMS)}")
        programs = FAMILY_PROGRAMS[family]
        channels = {}
        for note in notes:
            if note.voice not in channels:
                ch = len(channels) + (len(channels) >= _DRUM_CHANNEL)
                if ch > 15:
                    raise ValueError(f"too many voices to render ({len(channels) + 1}); at most 15")
                channels[note.voice] = ch
                self.synth.program_select(ch, self.sfid, 0, programs[min(note.voice, len(programs) - 1)])
        # Note-offs sort before note-ons at the same time, so repeated notes re-strike.
        events = sorted([(n.start_s, 1, channels[n.voice], n.pitch, n.velocity) for n in notes]
                        + [(n.end_s, 0, channels[n.voice], n.pitch, 0) for n in notes])
        total = int(round(duration_s * self.sample_rate))
        out, done = [], 0
        for t, on, ch, pitch, vel in events:
            at = min(total, int(round(t * self.sample_rate)))
            out.append(self._generate(at - done))
            done = max(done, at)
            if on:
                self.synth.noteon(ch, pitch, vel)
            else:
                self.synth.noteoff(ch, pitch)
        out.append(self._generate(total - done))
        self.synth.sounds_off()
        self._generate(self.sample_rate // 10)  # let released voices die before the next clip
        audio = np.concatenate(out)[:total].astype(np.float32)
        peak = float(np.abs(audio).max()) if len(audio) else 0.0
        return audio * (0.9 / peak) if peak > 0 else audio


def midi_notes(path: str | os.PathLike) -> list[Note]:
    """The notes of a MIDI file (pretty_midi), one voice per instrument track; drum tracks are left out."""
    import pretty_midi  # optional extra (divcfg[music])

    midi = pretty_midi.PrettyMIDI(os.fspath(path))
    return [Note(n.start, n.end, n.pitch, voice, n.velocity)
            for voice, inst in enumerate(i for i in midi.instruments if not i.is_drum) for n in inst.notes]
