"""utils/data/regions.py against scipy.ndimage, whose results it must give, and the cold-start promise it
exists for: reading an image and testing its ink never imports scipy.ndimage."""

import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from utils.data.regions import box_mean, count_parts, disk, distance_to_background, label, window_extreme

SHAPES = [(1, 1), (1, 9), (9, 1), (2, 3), (28, 28), (37, 64), (5, 200), (120, 90)]


def masks():
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        for density in (0.0, 0.2, 0.45, 0.6, 1.0):
            yield rng.random(shape) < density
    # shapes that need many merge rounds: a spiral, a comb whose teeth join only at the bottom, a staircase
    spiral = np.zeros((41, 41), bool)
    r0, c0, r1, c1 = 0, 0, 40, 40
    while r0 <= r1 and c0 <= c1:
        spiral[r0, c0:c1 + 1] = spiral[r0:r1 + 1, c1] = True
        spiral[r1, c0:c1 + 1] = True
        spiral[r0 + 2:r1 + 1, c0] = True
        r0, c0, r1, c1 = r0 + 2, c0 + 2, r1 - 2, c1 - 2
    yield spiral
    comb = np.zeros((30, 61), bool)
    comb[:, ::2] = True
    comb[-1] = True
    yield comb
    yield np.eye(50, dtype=bool) | np.eye(50, k=1, dtype=bool)
    yield np.eye(50, dtype=bool)  # diagonal pixels touch only at corners: 50 parts under 4-connectivity


@pytest.mark.parametrize("i", range(len(list(masks()))))
def test_label_is_scipys(i):
    mask = list(masks())[i]
    ours, n = label(mask)
    ref, n_ref = ndimage.label(mask)
    assert n == n_ref
    assert ours.dtype == np.int32
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("shape", SHAPES + [(3, 400)])
@pytest.mark.parametrize("size", [1, 3, 5, 9])
def test_box_mean_is_scipys(shape, size):
    a = np.random.default_rng(size).random(shape, dtype=np.float32)
    ref = ndimage.uniform_filter(a, size=size)
    ours = box_mean(a, size)
    assert ours.dtype == np.float32 and ours.shape == a.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-7)


def test_box_mean_thresholds_like_scipy_on_ink():
    """The use that matters: the ink mask at INK_FLOOR of a sheet with strokes and grain is the same."""
    rng = np.random.default_rng(3)
    ink = np.clip(ndimage.gaussian_filter(rng.random((300, 200)), 3) * 4 - 1.6, 0, 1).astype(np.float32)
    ink[::7] *= 0.5
    for k in (3, 5):
        np.testing.assert_array_equal(box_mean(ink, k) >= 0.25, ndimage.uniform_filter(ink, size=k) >= 0.25)


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (28, 28), (100, 73)])
@pytest.mark.parametrize("r", [1, 2, 5])
def test_window_extreme_is_scipys_grey_dilation_and_erosion(shape, r):
    a = np.random.default_rng(r).random(shape, dtype=np.float32)
    np.testing.assert_array_equal(window_extreme(a, disk(r), largest=True), ndimage.grey_dilation(a, footprint=disk(r)))
    np.testing.assert_array_equal(window_extreme(a, disk(r), largest=False), ndimage.grey_erosion(a, footprint=disk(r)))
    square = np.ones((3, 3), bool)
    np.testing.assert_array_equal(window_extreme(a, square, largest=True), ndimage.maximum_filter(a, size=3))


@pytest.mark.parametrize("i", range(len(list(masks()))))
def test_distance_to_background_is_scipys_edt(i):
    mask = list(masks())[i].copy()
    mask[0, 0] = False  # scipy's distance needs one pixel of background
    np.testing.assert_array_equal(distance_to_background(mask), ndimage.distance_transform_edt(mask))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="odd"):
        box_mean(np.zeros((4, 4)), 4)
    with pytest.raises(ValueError, match="2-D"):
        label(np.zeros((2, 2, 2), bool))
    with pytest.raises(ValueError, match="odd"):
        window_extreme(np.zeros((4, 4)), np.ones((2, 3), bool), largest=True)


def test_reading_an_image_does_not_import_scipy(tmp_path):
    """A cold verify or search reads images and tests their ink: none of it may import scipy.ndimage."""
    from PIL import Image

    sheet = np.full((90, 70), 230, np.uint8)
    sheet[20:70, 30:38] = 20
    Image.fromarray(sheet).save(tmp_path / "one.png")
    code = ("import sys\n"
            "from utils.data.images import load_image\n"
            "from utils.inference.reject import ink_statistics\n"
            "for how in ('fit', 'mnist', 'mnist_stroke'):\n"
            f"    x = load_image({str(tmp_path / 'one.png')!r}, 28, polarity='light_on_dark', normalise=how)\n"
            "    s = ink_statistics(x[None])\n"
            "    assert s[0, 3] == 1, (how, s)\n"
            "print(sorted(m for m in sys.modules if m.startswith('scipy')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_count_parts_is_scipys_one_by_one():
    rng = np.random.default_rng(1)
    masks = rng.random((300, 12, 9)) < rng.random((300, 1, 1))  # densities from empty to full
    masks[5] = False
    ours = count_parts(masks, chunk=64)  # several chunks, one of them partial
    np.testing.assert_array_equal(ours, [ndimage.label(m)[1] for m in masks])
    assert count_parts(np.zeros((0, 4, 4), bool)).shape == (0,)


def test_large_images_go_to_scipy_with_the_same_answer(monkeypatch):
    """Over SCIPY_ABOVE pixels scipy answers; numpy's answer at that size is the same."""
    import utils.data.regions as regions

    rng = np.random.default_rng(4)
    a = rng.random((1100, 1000), dtype=np.float32)
    mask = a < 0.3
    scipy_box, (scipy_lab, scipy_n) = box_mean(a, 5), label(mask)
    monkeypatch.setattr(regions, "SCIPY_ABOVE", 1 << 30)
    np.testing.assert_allclose(box_mean(a, 5), scipy_box, rtol=0, atol=2e-7)
    lab, n = label(mask)
    assert n == scipy_n
    np.testing.assert_array_equal(lab, scipy_lab)
