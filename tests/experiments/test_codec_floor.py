import numpy as np

from divcfg.experiments.codec_floor import clips_and_noise
from divcfg.world.procedural import WorldConfig, generate_corpus


def test_the_recovered_noise_is_what_synthesize_added_and_leaves_the_clips_unchanged():
    audio, noise = clips_and_noise(9400, 3)
    same = np.stack([c.audio for c in generate_corpus(WorldConfig(seed=0, n_clips=9600, duration_s=3.0), 9400, 3)])
    assert np.array_equal(audio, same)  # recording the draws does not change them
    # White noise of amplitude 0.0035..0.0105 (uniform in ±amplitude/2), one level per clip.
    half_range = np.abs(noise).max(1)
    assert np.all((half_range > 0.0035 / 2 * 0.99) & (half_range <= 0.0105 / 2))
    assert abs(float(np.corrcoef(noise[0, :-1], noise[0, 1:])[0, 1])) < 0.02
    # What remains is the music: far louder than the noise, and the noise is uncorrelated with it.
    music = audio - noise
    assert np.all(music.std(1) > 10 * noise.std(1))
    assert abs(float(np.corrcoef(music[0], noise[0])[0, 1])) < 0.02
