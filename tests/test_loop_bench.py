"""benchmarks/loop.py's audit bound: the random sample a remaining-objects count would need."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SPEC = importlib.util.spec_from_file_location("loop_bench", REPO / "benchmarks" / "loop.py")
loop = importlib.util.module_from_spec(SPEC)
sys.modules["loop_bench"] = loop      # its dataclasses look their module up
SPEC.loader.exec_module(loop)


def test_audit_of_one_band_is_the_textbook_sample_size():
    """100 pending objects, 10 missing, one band: S^2 = 0.1 * 0.9 * 100/99, V = 1.5^2,
    n0 = N^2 S^2 / V = 404.04, with the finite-population correction n0 / (1 + n0/N) = 80.2:
    81 decisions."""
    missing = np.zeros(100, bool)
    missing[::10] = True
    assert loop.audit_size(np.linspace(1, 0, 100), missing, bands=1) == 81


def test_audit_needs_nothing_where_the_bands_separate_missing_from_false():
    """The 10 missing objects score highest: with 10 bands each band is all or nothing,
    so a band's one look tells its count; one band mixes them and needs 81."""
    scores = np.linspace(1, 0, 100)
    missing = scores > scores[10]
    assert loop.audit_size(scores, missing, bands=10) == 0
    assert loop.audit_size(scores, missing, bands=1) == 81
    assert loop.audit_size(scores, np.zeros(100, bool)) is None      # nothing left to count
