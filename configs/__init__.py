"""Experiment configs: one file per dataset plus the demo, each with `get_config(arg=None)`."""
