"""Hugging Face MusicGen behind the policy interface: loading a checkpoint, the adapter around transformers' decoder,
and its memory model. May import the rest of model/, codec/ and common/.
"""
