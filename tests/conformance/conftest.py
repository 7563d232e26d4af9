"""Conformance suites: parametrised over every registry, so a new plug-in is tested by adding it.

The helpers of tests/ (require_extras, the torch-thread fixture of tests/conftest.py) are shared."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
