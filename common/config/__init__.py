"""The typed configs (one dataclass per component), their checks, `--help` for config keys, and the Hydra app wrapper.
Imports nothing of divcfg outside this package.
"""
