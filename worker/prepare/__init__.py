"""Preparing base models, not jobs: the aligned embedded base (``align``), the base's scoring and evaluation
caches (``caches``), and the quick per-machine cost measurement the demo plans with (``calibrate``)."""
