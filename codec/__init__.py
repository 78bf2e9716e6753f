"""Audio <-> codes: the offline fitted codec and EnCodec 24 kHz, MusicGen's EnCodec, their shared base, decoders and
phase, fitting, evaluation, and `divcfg tokenize`. May import common/.
"""
