"""Band layout: the numpy twins (host labels) agree with the jax fast path and the dense references."""
import jax.numpy as jnp
import numpy as np
import pytest

from sener_jax.band_layout import (
    band_cell_mask,
    band_cell_mask_np,
    band_column,
    band_end,
    band_from_dense,
    dense_cell_mask,
    gather_band,
    span_cells,
    transpose_band,
)
from sener_jax.data.labels import band_labels, spans_from_band

# (batch, length, window): window 0, window wider than the row, a single word, an empty row axis.
SHAPES = [(3, 9, 2), (2, 5, 0), (4, 7, 12), (2, 1, 3), (1, 0, 2), (5, 31, 4)]


def _padded_mask(rng, batch, length):
    """Right-padded word masks of random lengths; one row fully padded when there are several."""
    lengths = rng.integers(0, length + 1, size=batch)
    lengths[0] = length
    if batch > 1:
        lengths[-1] = 0
    return np.arange(length)[None, :] < lengths[:, None]


@pytest.mark.parametrize("batch,length,window", SHAPES)
def test_numpy_cell_mask_equals_jax(batch, length, window):
    rng = np.random.default_rng(batch * 100 + length + window)
    for mask in (_padded_mask(rng, batch, length), rng.random((batch, length)) < 0.6):  # and holes
        host = band_cell_mask_np(mask, window)
        device = np.asarray(band_cell_mask(jnp.asarray(mask), window))
        assert host.shape == device.shape == (batch, length, 2 * window + 1) and host.dtype == bool
        np.testing.assert_array_equal(host, device)
        # The dense reference reads out as the same band.
        np.testing.assert_array_equal(
            np.asarray(band_from_dense(dense_cell_mask(jnp.asarray(mask), window), window)), device
        )
    if length > 1 and window > 0:
        assert host.any() and not host.all()  # the comparison covered both kinds of cell


@pytest.mark.parametrize("batch,length,window", SHAPES)
def test_band_end_matches_gather_band(batch, length, window):
    positions = jnp.broadcast_to(jnp.arange(1, length + 1)[None, :, None], (batch, length, 1))
    gathered = np.asarray(gather_band(positions, window))[..., 0] - 1  # -1 where off the grid
    ends = band_end(np.arange(length)[:, None], np.arange(2 * window + 1)[None, :], window)
    on_grid = (ends >= 0) & (ends < length)
    np.testing.assert_array_equal(gathered, np.where(on_grid, ends, -1)[None].repeat(batch, 0))
    np.testing.assert_array_equal(band_column(np.arange(length)[:, None], ends, window),
                                  np.broadcast_to(np.arange(2 * window + 1), ends.shape))


@pytest.mark.parametrize("batch,length,window", [s for s in SHAPES if s[1] > 0])
def test_host_labels_follow_the_device_layout(batch, length, window):
    """Labels built on the host (`span_cells`) sit on valid cells only and are mirrored exactly as
    the device's `transpose_band` mirrors a band."""
    rng = np.random.default_rng(length * 7 + window)
    mask = _padded_mask(rng, batch, length)
    labels = np.zeros((batch, length, 2 * window + 1, 2), bool)
    expected = []
    for b in range(batch):
        n = int(mask[b].sum())
        spans = set()
        for _ in range(6 if n else 0):
            start = int(rng.integers(0, n))
            end = int(rng.integers(start + 1, min(n, start + window + 1) + 1))
            spans.add((start, end, int(rng.integers(0, 2))))
        band_labels(sorted(spans), n, window, {}, num_types=2, out=labels[b, :n])
        expected.append(sorted(spans))
        assert spans_from_band(labels[b], window) == sorted(spans)
    assert any(expected)
    valid = np.asarray(band_cell_mask(jnp.asarray(mask), window))
    assert not labels[~valid].any()
    mirrored = np.asarray(transpose_band(jnp.asarray(labels), window))
    np.testing.assert_array_equal(mirrored, labels)


def test_span_cells_are_the_span_and_its_mirror():
    assert span_cells(1, 3, 3) == ((1, 5), (3, 1))
    assert span_cells(2, 2, 3) == ((2, 3), (2, 3))
    starts, lasts = np.array([0, 4]), np.array([2, 4])
    (r1, k1), (r2, k2) = span_cells(starts, lasts, 2)
    np.testing.assert_array_equal(k1, [4, 2])
    np.testing.assert_array_equal(k2, [0, 2])
    np.testing.assert_array_equal(band_end(r2, k2, 2), starts)
