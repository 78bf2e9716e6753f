"""Audio files, captions and their schema, prompts, token datasets and world directories, as data: no model, no codec.
Imports nothing of divcfg outside this package.
"""
