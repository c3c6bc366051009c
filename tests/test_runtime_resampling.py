"""The streaming resampler equals scipy's resample_poly on the whole signal, for any chunking."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from scipy.signal import resample_poly

from acula_edge.audio import resample
from acula_edge.runtime.resampling import StreamResampler


@pytest.mark.parametrize("orig,target", [(4000, 2000), (44100, 2000), (8000, 4000), (1000, 2000), (22050, 16000),
                                         (2000, 3000)])
@pytest.mark.parametrize("n", [1, 5, 1237])
def test_stream_resampler_equals_resample_poly(orig, target, n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n).astype(np.float32)
    ratio = Fraction(target, orig)
    expected = resample_poly(x.astype(np.float64), ratio.numerator, ratio.denominator).astype(np.float32)
    np.testing.assert_array_equal(resample(x, orig, target), expected)  # what offline classify uses
    for sizes in ([1] * n, list(rng.integers(1, 300, size=n))):
        rs = StreamResampler(orig, target)
        out, i = [], 0
        for size in sizes:
            out.append(rs.push(x[i:i + size]))
            i += size
            if i >= n:
                break
        out.append(rs.flush())
        y = np.concatenate(out)
        assert y.shape == expected.shape and y.dtype == np.float32
        np.testing.assert_allclose(y, expected, atol=1e-6)
        assert rs.n_in == n and rs.n_out == expected.shape[0]


def test_outputs_are_emitted_as_soon_as_their_inputs_arrived():
    rs = StreamResampler(4000, 2000)
    first = rs.push(np.ones(100, np.float32))
    assert 0 < first.shape[0] < 50  # the filter's look-ahead holds back the last few outputs
    rest = rs.flush()
    assert first.shape[0] + rest.shape[0] == 50
    rs.reset()
    assert rs.push(np.zeros(0, np.float32)).shape == (0,) and rs.n_in == 0
