"""Hydra's YAML configs, typed by divcfg.common.config.schema. Data only: imports nothing."""
