"""Colour in the photo vector: a Lab histogram of the product region computed inside the image tower.

An ImageNet trunk is trained to ignore colour (colour jitter is one of its augmentations), so a
projection of its pooled features cannot put colour back. :class:`ColourTrunk` wraps the trunk and
appends the ``lab_l4ab8`` descriptor of :mod:`skulens.models.colour` (computed in torch from the
preprocessed pixels) to the pooled features; the projection head then learns, with the contrastive
loss, how much colour goes into the shared vector and where ("navy" in a query meets the navy bins
of a photo). Being part of the model, the descriptor travels with it: cached trunk features,
ONNX export, the INT8 parity gate and the served photo search all see the same vector.

The branch is plain arithmetic and a scatter-add, no weights: INT8 quantisation must leave it alone
(:func:`outside_trunk_nodes` lists the ONNX nodes the quantiser skips).
"""

from __future__ import annotations

from typing import Any

from skulens.models.colour import (
    AB_BINS,
    AB_LOW,
    AB_WIDTH,
    BACKGROUND_AB,
    BACKGROUND_L,
    L_BINS,
    MIN_FOREGROUND,
)

COLOUR_DIMS = L_BINS * AB_BINS * AB_BINS
# Every second pixel of every second row: a quarter of the work (measured 29 -> ~8 ms for 8 photos
# at 224 px in ONNX Runtime on 2 cores) for a histogram of 12,544 pixels instead of 50,176.
PIXEL_STRIDE = 2
# The scope name of the branch in the module tree; the ONNX exporter records it on every node.
BRANCH_NAME = "colour_histogram"
_RGB_TO_XYZ = ((0.4124564, 0.3575761, 0.1804375),
               (0.2126729, 0.7151522, 0.0721750),
               (0.0193339, 0.1191920, 0.9503041))
_D65 = (0.95047, 1.0, 1.08883)


def _modules():  # noqa: ANN202 - torch is imported lazily: the package imports without it
    import torch
    from torch import nn

    class ColourHistogram(nn.Module):
        """(B, 3, H, W) normalised pixels -> (B, 256) Hellinger-mapped L x a x b histogram of the
        product region (the numpy ``lab_l4ab8`` of the model's own input, every ``PIXEL_STRIDE``-th pixel)."""

        def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], scale: float) -> None:
            super().__init__()
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
            self.scale = float(scale)

        def forward(self, pixels):  # noqa: ANN001, ANN202
            pixels = pixels[:, :, ::PIXEL_STRIDE, ::PIXEL_STRIDE]
            rgb = (pixels * self.std + self.mean).clamp(0.0, 1.0)
            lin = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
            r, g, b = lin[:, 0], lin[:, 1], lin[:, 2]
            # Written out, not a MatMul: nothing here may look like a weight to a quantiser.
            xyz = [(m[0] * r + m[1] * g + m[2] * b) / d for m, d in zip(_RGB_TO_XYZ, _D65, strict=True)]
            edge = (6 / 29) ** 3
            fx, fy, fz = (torch.where(t > edge, t.clamp_min(1e-12) ** (1 / 3), t / (3 * (6 / 29) ** 2) + 4 / 29)
                          for t in xyz)
            light, a, bb = 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)
            background = (light > BACKGROUND_L) & (a.abs() < BACKGROUND_AB) & (bb.abs() < BACKGROUND_AB)
            keep = (~background).flatten(1).float()
            few = keep.mean(dim=1, keepdim=True) < MIN_FOREGROUND
            keep = torch.where(few, torch.ones_like(keep), keep)
            l_bin = torch.floor(light / (100 / L_BINS)).clamp(0, L_BINS - 1)
            a_bin = torch.floor((a - AB_LOW) / AB_WIDTH).clamp(0, AB_BINS - 1)
            b_bin = torch.floor((bb - AB_LOW) / AB_WIDTH).clamp(0, AB_BINS - 1)
            index = ((l_bin * AB_BINS + a_bin) * AB_BINS + b_bin).flatten(1).long()
            counts = torch.zeros(pixels.shape[0], COLOUR_DIMS, dtype=keep.dtype, device=keep.device)
            counts = counts.scatter_add(1, index, keep)
            hist = torch.sqrt(counts / counts.sum(dim=1, keepdim=True).clamp_min(1e-12))
            return nn.functional.normalize(hist, dim=1) * self.scale

    class ColourTrunk(nn.Module):
        """The image trunk's pooled features with the colour histogram appended."""

        def __init__(self, trunk: nn.Module, histogram: nn.Module) -> None:
            super().__init__()
            self.inner = trunk
            self.add_module(BRANCH_NAME, histogram)

        def forward(self, pixels):  # noqa: ANN001, ANN202
            return torch.cat([self.inner(pixels), getattr(self, BRANCH_NAME)(pixels)], dim=1)

    return ColourHistogram, ColourTrunk


def add_colour_branch(model: Any, mean: tuple[float, ...], std: tuple[float, ...], scale: float) -> None:
    """Wrap ``model.visual.trunk`` (an open_clip TimmModel) with the colour histogram and widen the
    first layer of the projection (``timm_proj: linear`` or ``mlp``) to take it; the trunk's own
    weights and the layer's trunk columns keep their values (the colour columns start at zero, so an
    untrained branch changes nothing)."""
    import torch
    from torch import nn

    histogram_cls, trunk_cls = _modules()
    visual = model.visual
    owner, attr = (visual.head, "proj") if hasattr(visual.head, "proj") else (getattr(visual.head, "mlp", None), "fc1")
    first = getattr(owner, attr, None)
    if not isinstance(first, nn.Linear):
        raise ValueError("the colour branch needs a linear or MLP image projection (timm_proj: linear | mlp)")
    visual.trunk = trunk_cls(visual.trunk, histogram_cls(mean, std, scale))
    wider = nn.Linear(first.in_features + COLOUR_DIMS, first.out_features, bias=first.bias is not None)
    with torch.no_grad():
        wider.weight.zero_()
        wider.weight[:, :first.in_features] = first.weight
        if first.bias is not None:
            wider.bias.copy_(first.bias)
    setattr(owner, attr, wider)


def colour_histogram(pixels, mean: tuple[float, ...], std: tuple[float, ...]):  # noqa: ANN001, ANN201
    """The branch alone on a batch of preprocessed pixels (unit rows); for tests and benchmarks."""
    histogram_cls, _ = _modules()
    return histogram_cls(mean, std, 1.0)(pixels)


def outside_trunk_nodes(model_path: Any) -> list[str]:
    """ONNX nodes of an image tower with a colour branch that INT8 quantisation must leave fp32: the
    branch itself (reached from the pixels without passing a Conv) and everything from the Concat
    that joins it to the trunk on (the projection and the normalisation: one small MatMul).

    Why the head too: one per-tensor uint8 scale over the joined vector spends its steps on the
    trunk's range (up to ~10) and leaves a few for the histogram's (0.0-0.3). Found from the graph,
    not from node names, because ORT's pre-processing renames and fuses nodes."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    producers = {out: n for n in graph.node for out in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)

    def downstream(starts: list[Any]) -> set[str]:
        seen: set[str] = set()
        todo = list(starts)
        while todo:
            node = todo.pop()
            if node.name in seen:
                continue
            seen.add(node.name)
            for out in node.output:
                todo.extend(consumers.get(out, []))
        return seen

    after_conv = downstream([n for n in graph.node if n.op_type == "Conv"])
    joins = [n for n in graph.node if n.op_type == "Concat" and n.name in after_conv
             and any(i in producers and producers[i].name not in after_conv for i in n.input)]
    if not joins:
        return []
    keep = {n.name for n in graph.node if n.name not in after_conv} | downstream(joins)
    return [n.name for n in graph.node if n.name in keep]
