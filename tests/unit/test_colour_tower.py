"""The colour branch of the image tower: the numpy descriptor in torch, wired so training, export and
INT8 quantisation keep it."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from skulens.data.pairs import ProductSet  # noqa: E402
from skulens.models.colour import lab_l4ab8  # noqa: E402
from skulens.models.colour_tower import (  # noqa: E402
    COLOUR_DIMS,
    PIXEL_STRIDE,
    add_colour_branch,
    colour_histogram,
    outside_trunk_nodes,
)
from skulens.training.two_tower import label_targets  # noqa: E402

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def _photos() -> np.ndarray:
    """A navy shirt and a red one on studio white, and a photo of noise: (3, 32, 32, 3) uint8."""
    rng = np.random.default_rng(0)
    photos = np.full((3, 32, 32, 3), 255, np.uint8)
    photos[0, 8:24, 8:24] = (20, 30, 90)
    photos[1, 4:28, 10:22] = (200, 20, 30)
    photos[2] = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return photos


def _pixels(photos: np.ndarray):  # noqa: ANN202
    x = torch.from_numpy(photos).permute(0, 3, 1, 2).float() / 255
    return (x - 0.5) / 0.5


def test_the_torch_branch_is_the_numpy_descriptor_of_the_same_pixels():
    photos = _photos()
    ours = colour_histogram(_pixels(photos), MEAN, STD).numpy()
    reference = np.stack([lab_l4ab8(p[::PIXEL_STRIDE, ::PIXEL_STRIDE].reshape(-1, 3)) for p in photos])
    assert ours.shape == (3, COLOUR_DIMS)
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    assert float(ours[0] @ ours[1]) < 0.2  # navy and red share (almost) no bins: the white is left out


class _Visual(nn.Module):
    """The shape of an open_clip TimmModel: ``trunk`` (pooled features) and ``head.proj``."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(OrderedDict(drop=nn.Dropout(0.0), proj=nn.Linear(8, 4, bias=False)))

    def forward(self, pixels):  # noqa: ANN001, ANN202
        return nn.functional.normalize(self.head(self.trunk(pixels)), dim=-1)


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.visual = _Visual()


def test_an_untrained_branch_changes_nothing_and_a_trained_one_sees_colour():
    torch.manual_seed(0)
    model = _Model().eval()
    pixels = _pixels(_photos())
    before = model.visual(pixels).detach()
    add_colour_branch(model, MEAN, STD, scale=4.0)
    assert model.visual.trunk(pixels).shape == (3, 8 + COLOUR_DIMS)
    assert torch.allclose(model.visual(pixels), before, atol=1e-6)  # the colour columns start at zero
    with torch.no_grad():
        model.visual.head.proj.weight[:, 8:] = torch.randn(4, COLOUR_DIMS)
    assert not torch.allclose(model.visual(pixels), before, atol=1e-3)


def test_an_mlp_projection_is_widened_at_its_first_layer():
    from open_clip.timm_model import Mlp

    torch.manual_seed(0)
    model = _Model().eval()
    model.visual.head = nn.Sequential(OrderedDict(mlp=Mlp(8, 16, 4)))
    pixels = _pixels(_photos())
    before = model.visual(pixels).detach()
    add_colour_branch(model, MEAN, STD, scale=4.0)
    assert model.visual.head.mlp.fc1.in_features == 8 + COLOUR_DIMS
    assert torch.allclose(model.visual(pixels), before, atol=1e-6)


def test_int8_quantisation_skips_the_branch_and_the_head_but_not_the_trunk(tmp_path):
    from skulens.export.onnx_export import export_module

    model = _Model().eval()
    add_colour_branch(model, MEAN, STD, scale=4.0)

    class Image(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixels):  # noqa: ANN001, ANN202
            return self.model.visual(pixels)

    path = export_module(Image(), (_pixels(_photos())[:2],), tmp_path / "image.onnx", ["pixels"], "image_embedding")
    import onnx

    nodes = {n.name: n.op_type for n in onnx.load(str(path)).graph.node}
    skipped = {nodes[name] for name in outside_trunk_nodes(path)}
    assert {"ScatterElements", "Concat"} <= skipped and skipped & {"MatMul", "Gemm"}  # branch, join, projection
    assert "Conv" not in skipped


def test_a_tower_without_the_branch_keeps_every_node_quantisable(tmp_path):
    from skulens.export.onnx_export import export_module

    class Image(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.visual = _Visual().eval()

        def forward(self, pixels):  # noqa: ANN001, ANN202
            return self.visual(pixels)

    path = export_module(Image(), (torch.zeros(2, 3, 32, 32),), tmp_path / "plain.onnx", ["pixels"], "out")
    assert outside_trunk_nodes(path) == []


def test_label_targets_index_the_training_classes_and_mark_missing_values():
    products = ProductSet("train", ["a", "b", "c"], [b"", b"", b""], ["", "", ""], ["", "", ""], ["", "", ""],
                          [{"article_type": "Shirts", "colour": "Navy Blue"}, {"article_type": "Jeans"},
                           {"article_type": "Shirts", "colour": "Red"}])
    classes, targets = label_targets(products, ["article_type", "colour"])
    assert classes == {"article_type": ["Jeans", "Shirts"], "colour": ["Navy Blue", "Red"]}
    assert targets.tolist() == [[1, 0], [0, -1], [1, 1]]
