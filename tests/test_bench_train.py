"""benchmarks/bench_train.py's work count: the dense MACs per image that put the time-per-image target in context
agree with the published counts where the scan's recurrence is negligible (DeiT-Ti; VMamba-T's single state)."""

from __future__ import annotations

import pytest


@pytest.fixture()
def bench(import_bench):
    return import_bench("bench_train")


def test_dense_macs_match_published_counts(bench):
    deit = bench.dense_gmacs("deit_tiny", 224)
    assert deit == pytest.approx(1.26, rel=0.01)  # DeiT-Ti: 1.26 GMAC (fvcore; "1.3G" in ../shared/reference/deit.md)
    vmamba = bench.dense_gmacs("vmamba_tiny", 224)
    assert vmamba == pytest.approx(4.91, rel=0.02)  # VMamba-T[s1l8]: 4.91 G (../shared/reference/vmamba.md)
    assert bench.dense_gmacs("deit_tiny", 192) < deit  # fewer tokens, less work: the count follows the input
