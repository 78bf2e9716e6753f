"""Checkpoint files (atomic directories, manifests, safetensors) and the training state saved beside them. Imports
nothing of divcfg outside this package.
"""
