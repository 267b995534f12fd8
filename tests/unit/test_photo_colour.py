"""Colour descriptors of product photos and the photo -> photo evaluation."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from skulens.evaluation.metrics import paired_bootstrap
from skulens.evaluation.photos import (
    chance_precision,
    choose_weight,
    colour_confusions,
    neighbours,
    pool_of,
    precision_per_query,
)
from skulens.models.colour import DESCRIPTORS, colour_descriptors, foreground, rgb_to_lab


def product_photo(colour: tuple[int, int, int], share: float = 0.3, size: int = 64) -> np.ndarray:
    """A product of ``colour`` filling ``share`` of a white studio photo."""
    photo = np.full((size, size, 3), 255, dtype=np.uint8)
    side = int(size * share ** 0.5)
    photo[:side, :side] = colour
    return photo


def as_png(photo: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="PNG")
    return buffer.getvalue()


def test_lab_of_known_colours():
    lab = rgb_to_lab(np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0]], dtype=np.uint8))
    assert lab[0] == pytest.approx([100, 0, 0], abs=0.1) and lab[1] == pytest.approx([0, 0, 0], abs=0.1)
    assert lab[2, 1] > 70 and lab[2, 2] > 60  # red: strongly +a, +b


def test_the_white_background_is_left_out_unless_nothing_else_is_there():
    lab = rgb_to_lab(product_photo((200, 20, 20), share=0.25))
    assert foreground(lab).mean() == pytest.approx(0.25, abs=0.05)
    assert foreground(rgb_to_lab(np.full((8, 8, 3), 255, np.uint8))).all()  # a white product on white


@pytest.mark.parametrize("name", list(DESCRIPTORS))
def test_every_descriptor_tells_red_from_blue_whatever_the_product_size(name):
    red_small, red_big = product_photo((200, 20, 20), 0.1), product_photo((190, 30, 25), 0.6)
    blue = product_photo((20, 30, 200), 0.1)
    vectors = colour_descriptors([as_png(red_small), as_png(red_big), as_png(blue)], name)
    assert np.linalg.norm(vectors, axis=1) == pytest.approx(1.0, abs=1e-5)
    if name == "lab_ab8_whole_photo":  # the background dominates an unmasked histogram
        assert vectors[0] @ vectors[1] < vectors[0] @ vectors[2] + 0.5
    else:
        assert vectors[0] @ vectors[1] > 0.9 > vectors[0] @ vectors[2] + 0.5


def test_an_unknown_descriptor_is_named():
    with pytest.raises(ValueError, match="unknown colour descriptor 'rainbow'"):
        colour_descriptors([], "rainbow")


TYPES = ["shirt", "shirt", "shirt", "shoe", "shoe", "shoe"]
COLOURS = ["red", "red", "blue", "red", "blue", "blue"]


def test_precision_excludes_the_query_itself_and_counts_each_label():
    identity_like = np.eye(6) * 10 + np.array([[0, 3, 2, 1, 0, 0]] * 6)  # the diagonal must never win
    near = neighbours(identity_like, k=2)
    assert all(i not in row for i, row in enumerate(near))
    sim = np.array([[1 if t1 == t2 else 0 for t2 in TYPES] for t1 in TYPES], dtype=np.float32)
    sim += 0.1 * np.array([[1 if c1 == c2 else 0 for c2 in COLOURS] for c1 in COLOURS])
    p = precision_per_query(sim, TYPES, COLOURS, k=2)
    assert p["type"].tolist() == [1.0] * 6
    assert p["type+colour"][0] == 0.5  # shirt/red: the other red shirt, then the blue one


def test_fusion_weight_is_chosen_on_the_labels_and_the_bootstrap_brackets_the_gain():
    # The shape similarity knows the type and slightly prefers the other colour; colour knows only colour.
    items = list(zip(TYPES, COLOURS, strict=True))
    shape = np.array([[(1.0 if t1 == t2 else 0.0) + (0.01 if c1 != c2 else 0.0) for t2, c2 in items]
                      for t1, c1 in items])
    colour = np.array([[1.0 if c1 == c2 else 0.0 for c2 in COLOURS] for c1 in COLOURS])
    w, tried = choose_weight(shape, colour, TYPES, COLOURS, k=1)
    assert 0 < w < 1 and tried[w] > tried[1.0] and tried[w] > tried[0.0]
    mean, low, high = paired_bootstrap(np.array([0.5, 0.6, 0.7, 0.8]), np.array([0.4, 0.5, 0.6, 0.7]))
    assert mean == pytest.approx(0.1) and low == pytest.approx(0.1) and high == pytest.approx(0.1)
    confusions = colour_confusions(shape, TYPES, COLOURS, k=1)
    assert confusions[0][0] == "blue / red"
    assert chance_precision(TYPES, COLOURS)["type"] == pytest.approx(0.4)


def test_pools_are_stable_and_sized_by_share():
    pools = [pool_of(str(i)) for i in range(5000)]
    assert pools == [pool_of(str(i)) for i in range(5000)]
    assert 0.17 < pools.count("test") / 5000 < 0.23 and 0.10 < pools.count("val") / 5000 < 0.16


def test_photo_to_photo_of_a_split_counts_type_and_type_plus_colour():
    from skulens.data.pairs import ProductSet
    from skulens.evaluation.embedder import photo_to_photo

    ids = [str(i) for i in range(12)]
    attributes = [{"article_type": "shirt" if i < 6 else "shoe", "colour": "red" if i % 2 else "blue"}
                  for i in range(12)]
    products = ProductSet("test", ids, [b""] * 12, ids, ids, ids, attributes)
    # Vectors that know the type exactly and the colour not at all.
    vectors = np.array([[1.0, 0.0] if a["article_type"] == "shirt" else [0.0, 1.0] for a in attributes])
    vectors += np.random.default_rng(0).normal(0, 1e-3, vectors.shape)
    out = photo_to_photo(products, vectors)
    assert out["i2i_P@10_type"] == pytest.approx(0.5)  # 5 same-type photos in the top 10, then the others
    assert out["i2i_P@10"] == pytest.approx(0.2)  # the 2 same type + colour are among those 5
