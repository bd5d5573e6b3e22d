"""Shim for pips older than 19 (no PEP 517), e.g. RHEL 8's: the metadata is in setup.cfg."""
from setuptools import setup
setup()
