"""The independent judge (reward/pitch_judge.py): note decoding by hand, then Basic Pitch on rendered scales and
chords made here."""
import numpy as np
import pytest

from divcfg.reward.pitch_judge import PitchJudgeConfig, decode_notes, read_attributes

CFG = PitchJudgeConfig()
FPS = 22050 / 256


def test_decode_notes_follows_onset_peaks_and_held_frames():
    frames, onsets = np.zeros((120, 88)), np.zeros((120, 88))
    frames[10:40, 39] = 0.8          # MIDI 60 held for 30 frames
    onsets[9:12, 39] = (0.4, 0.9, 0.4)
    frames[50:55, 43] = 0.8          # MIDI 64: too short (5 frames <= 11)
    onsets[50, 43] = 0.9
    frames[60:100, 48] = 0.8         # MIDI 69 held, but its onset peak is below threshold ...
    onsets[60:63, 48] = (0.2, 0.3, 0.2)
    notes = decode_notes(frames, onsets, CFG)
    # ... yet the frame posterior's jump from 0 to 0.8 is an inferred onset (Basic Pitch's infer_onsets), as is
    # the jump at frame 10 for MIDI 60 (one note: the peaks coincide).
    assert notes.shape == (2, 3)
    assert notes[:, 2].tolist() == [60, 69]
    assert np.allclose(notes[0, :2], (10 / FPS, 40 / FPS)) and np.allclose(notes[1, :2], (60 / FPS, 100 / FPS))


def test_read_attributes_by_hand():
    pytest.importorskip("music21", reason="the music extra is not installed (make installs it)")  # key analysis
    # C major triad arpeggio twice, 4 onsets a second, middle register, one line.
    line = np.array([(0.25 * i, 0.25 * i + 0.2, p) for i, p in enumerate([60, 64, 67, 72, 67, 64, 60, 64])])
    got = read_attributes(line, 2.0, CFG)
    assert got["register"] == "middle" and got["texture"] == "solo" and got["density"] == "medium"
    assert got["mode"] == "major"
    # The same an octave and a half down, with a third above each note: low, several voices.
    thirds = np.concatenate([line - [0, 0, 18], line - [0, 0, 14]])
    got = read_attributes(thirds, 2.0, CFG)
    assert got["register"] == "low" and got["texture"] == "voices" and got["density"] == "medium"
    # Octave doublings (organ stops, overtones) are not voices; 1 onset a second is sparse.
    octaves = np.array([(t, t + 0.5, p) for t in (0.0, 1.0) for p in (57, 69, 81)])
    got = read_attributes(octaves, 2.0, CFG)
    assert got["texture"] == "solo" and got["density"] == "sparse" and got["register"] == "middle"
    assert read_attributes(np.zeros((0, 3)), 2.0, CFG) == dict.fromkeys(("mode", "register", "texture", "density"))


def _arpeggio(root, minor, family):
    from divcfg.world.music_render import Note
    steps = [0, 3 if minor else 4, 7, 12, 7, 3 if minor else 4, 0, 3 if minor else 4, 7, 3 if minor else 4, 0]
    return [Note(0.3 * i, 0.3 * i + 0.285, root + s) for i, s in enumerate(steps)], family


def _cadence(root, minor, family):
    """i-iv-V-i (harmonic minor) or I-IV-V-I, root position, 0.7 s a chord, four voices."""
    from divcfg.world.music_render import Note
    third = 3 if minor else 4
    chords = [(0, third, 7), (5, 5 + third, 12), (7, 11, 14), (0, third, 7)]
    return [Note(0.7 * i, 0.7 * i + 0.65, root + p, v) for i, c in enumerate(chords) for v, p in enumerate(c)], family


@pytest.mark.parametrize("make, root, minor, family, expected", [
    (_arpeggio, 60, False, "woodwind", ("major", "middle", "solo", "medium")),
    (_arpeggio, 81, True, "strings", ("minor", "high", "solo", "medium")),
    (_cadence, 43, False, "piano", ("major", "low", "voices", "sparse")),
    (_cadence, 57, True, "brass", ("minor", "middle", "voices", "sparse")),
])
def test_judge_hears_mode_register_texture_density_of_rendered_music(judge_and_renderer, make, root, minor, family,
                                                                       expected):
    judge, renderer = judge_and_renderer
    notes, family = make(root, minor, family)
    audio = renderer.render(notes, family, 3.5)
    heard = judge.read(audio, 16000)
    assert (heard["mode"], heard["register"], heard["texture"], heard["density"]) == expected, heard
    pitches = sorted({int(p) for p in judge.transcribe(audio, 16000)[:, 2]})
    assert set(pitches) >= {n.pitch for n in notes}, pitches  # every played pitch transcribed


@pytest.fixture(scope="module")
def judge_and_renderer():
    for module, why in (("onnxruntime", "the music extra is not installed"), ("music21", "the music extra is not "
                        "installed"), ("basic_pitch", "basic-pitch is not installed"), ("tinysoundfont", "the music "
                        "extra is not installed")):
        pytest.importorskip(module, reason=f"{why} (make installs it)")
    from divcfg.reward.pitch_judge import PitchJudge
    from divcfg.world.music_render import Renderer
    return PitchJudge(CFG), Renderer(sample_rate=16000)
