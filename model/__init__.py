"""The policy: divcfg's decoder and its parts, guidance, sampling, the delay pattern, the CUDA-graph step, log-probs,
merging, loading from checkpoints, and the MusicGen adapter (model/musicgen/). May import codec/ and common/.
"""
