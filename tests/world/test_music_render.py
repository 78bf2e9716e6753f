"""SoundFont rendering of the real-music world (world/music_render.py)."""
import numpy as np
import pytest

pytest.importorskip("tinysoundfont", reason="the music extra is not installed (make installs it)")
pytest.importorskip("pretty_midi", reason="the music extra is not installed (make installs it)")

from divcfg.world.music_render import FAMILY_PROGRAMS, Note, Renderer, SoundFontError, check_soundfont, midi_notes

SR = 16000


@pytest.fixture(scope="module")
def renderer():
    return Renderer(sample_rate=SR)


def _centroid(audio: np.ndarray) -> float:
    mag = np.abs(np.fft.rfft(audio))
    return float((mag * np.fft.rfftfreq(len(audio), 1 / SR)).sum() / mag.sum())


def test_short_midi_file_renders_non_silent_audio_where_its_notes_are(tmp_path, renderer):
    import pretty_midi

    midi = pretty_midi.PrettyMIDI()
    inst = pretty_midi.Instrument(program=0)
    inst.notes = [pretty_midi.Note(velocity=100, pitch=p, start=0.5 + 0.25 * i, end=0.7 + 0.25 * i)
                  for i, p in enumerate((60, 64, 67, 72))]
    midi.instruments.append(inst)
    midi.write(str(tmp_path / "arp.mid"))
    notes = midi_notes(tmp_path / "arp.mid")
    assert [(n.pitch, round(n.start_s, 2)) for n in notes] == [(60, 0.5), (64, 0.75), (67, 1.0), (72, 1.25)]
    audio = renderer.render(notes, "piano", 2.0)
    assert audio.shape == (2 * SR,) and audio.dtype == np.float32
    assert np.isclose(np.abs(audio).max(), 0.9, atol=1e-3)       # peak-normalised
    assert np.abs(audio[: int(0.45 * SR)]).max() < 1e-4           # silent before the first note
    assert np.sqrt(np.mean(audio[int(0.5 * SR): int(1.5 * SR)] ** 2)) > 0.05  # sounding while the notes play


def test_instrument_families_differ_in_spectral_centroid(renderer):
    notes = [Note(0.25 * i, 0.25 * i + 0.24, p) for i, p in enumerate((60, 62, 64, 65, 67, 65, 64, 62))]
    centroids = {f: _centroid(renderer.render(notes, f, 2.0)) for f in FAMILY_PROGRAMS}
    # Brass and organ are bright, the flute nearly a sine: measured 1732, 1701 and 918 Hz with TimGM6mb.
    assert centroids["brass"] > 1.4 * centroids["woodwind"], centroids
    assert centroids["organ"] > 1.4 * centroids["woodwind"], centroids
    assert max(centroids.values()) > 1.5 * min(centroids.values()), centroids


def test_silence_renders_zeros_and_voices_use_their_own_channels(renderer):
    assert not renderer.render([], "organ", 0.5).any()
    chord = [Note(0.0, 0.5, p, voice=v) for v, p in enumerate((72, 67, 64, 48))]
    assert np.abs(renderer.render(chord, "strings", 0.5)).max() > 0.5


def test_bad_soundfonts_and_families_are_named(tmp_path, renderer):
    with pytest.raises(SoundFontError, match="no such file"):
        check_soundfont(tmp_path / "missing.sf2")
    wav = tmp_path / "not.sf2"
    wav.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")
    with pytest.raises(SoundFontError, match=r"not\.sf2.*not a SoundFont"):
        Renderer(wav)
    with pytest.raises(ValueError, match="unknown instrument family 'kazoo'"):
        renderer.render([Note(0, 0.1, 60)], "kazoo", 0.2)
