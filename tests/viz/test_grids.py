"""Report figures: labels that fit and stay legible at the report's width, colour bars with numbers, and head maps
drawn on the image."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from traitlens.explain import Explanation, list_methods
from traitlens.report import CONTENT_WIDTH_PX
from traitlens.viz import (
    MIN_LABEL_PX,
    SIGNED_CMAP,
    GridLayout,
    colorize,
    grid_layout,
    head_grid,
    map_range,
    method_grid,
)
from traitlens.viz.colorbar import tick_label
from traitlens.viz.grids import _wrap, method_grid_figure
from traitlens.viz.overlay import SEQUENTIAL_CMAP


@pytest.mark.parametrize(("text", "lines"), [
    ("red-head/plain/fan/spike", ["red-head/plain/", "fan/spike"]),
    ("integrated_gradients", ["integrated_", "gradients"]),
    ("explained: red-head/plain/point/no-crest", ["explained:", "red-head/plain/", "point/no-crest"]),
    ("short", ["short"]),
    ("x" * 20, ["x" * 16, "x" * 4]),
])
def test_wrap_breaks_long_labels_and_keeps_every_character(text: str, lines: list[str]) -> None:
    out = _wrap(text)
    assert out.split("\n") == lines and all(len(line) <= 16 for line in lines)
    assert out.replace("\n", "").replace(" ", "") == text.replace(" ", "")


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_head_grid_draws_the_image_under_the_maps() -> None:
    image = torch.zeros(3, 16, 16)
    image[1] = 1.0  # a green image: only the overlay lets green through
    maps = torch.zeros(2, 4, 4)
    bare, drawn = _png(head_grid(maps)), _png(head_grid(maps, image=image))
    green = lambda a: ((a[..., 1] > 90) & (a[..., 0] < 40) & (a[..., 2] < 60)).sum()  # noqa: E731
    assert green(bare) == 0 and green(drawn) > 100


# ----------------------------------------------------------------------------- legible at the report's width


def _explanations(n_methods: int, B: int, targets: list[str] | None = None) -> dict[str, Explanation]:
    gen = torch.Generator().manual_seed(0)
    names = [m.name for m in list_methods(family="vit")][:n_methods]
    names += [f"method_with_a_long_name_{i}" for i in range(n_methods - len(names))]
    out = {}
    for i, name in enumerate(names):
        m = torch.randn(B, 1, 16, 16, generator=gen) * 10.0 ** (-(i % 5))
        signed = i % 2 == 0
        out[name] = Explanation(maps=m if signed else m.abs(), patch_maps=m[..., ::4, ::4],
                                targets=torch.zeros(B, 1, dtype=torch.long), method=name, signed=signed,
                                target_names=[[(targets or CLASSES)[(b + i * (targets is None)) % 4]]
                                              for b in range(B)])
    return out


CLASSES = ["red-head/plain/fan/no-crest", "red-head/plain/fan/spike", "blue-head/plain/fork/no-crest",
           "yellow-head/plain/fork/no-crest"]


def _texts(fig) -> list:
    from matplotlib.text import Text

    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def _check_legible(fig, lay: GridLayout, png: bytes) -> None:
    """Every text ≥ 11 px when the PNG is shown in the report, inside the figure, and no two texts (or a text and
    a panel) overlap."""
    width = Image.open(io.BytesIO(png)).size[0]
    assert width == lay.width_px <= CONTENT_WIDTH_PX  # drawn 1:1 for the report: never shrunk on screen
    shown = min(width, CONTENT_WIDTH_PX)
    renderer = fig.canvas.get_renderer()
    texts = _texts(fig)
    assert texts
    for t in texts:
        px = t.get_fontsize() * fig.dpi / 72.0 * shown / width
        assert px >= MIN_LABEL_PX, (t.get_text(), px)
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    fig_box = fig.bbox
    for text, box in boxes:
        assert box.x0 >= fig_box.x0 - 0.5 and box.x1 <= fig_box.x1 + 0.5, text
        assert box.y0 >= fig_box.y0 - 0.5 and box.y1 <= fig_box.y1 + 0.5, text
    for i, (a, box_a) in enumerate(boxes):
        for b, box_b in boxes[i + 1:]:
            assert not box_a.overlaps(box_b), (a, b)
    panels = [ax.get_window_extent(renderer) for ax in fig.axes if ax.get_visible() and ax.axison]
    for text, box in boxes:
        for panel in panels:
            assert not box.overlaps(panel), (text, panel)


@pytest.mark.parametrize(("n_methods", "B", "shared"), [(17, 2, True), (3, 4, True), (6, 2, False), (1, 1, True)])
def test_method_grid_text_is_legible_and_never_overlaps(n_methods: int, B: int, shared: bool) -> None:
    import matplotlib.pyplot as plt

    exps = _explanations(n_methods, B, targets=CLASSES if shared else None)
    images = torch.rand(B, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    fig, lay = method_grid_figure(images, exps, row_labels=[CLASSES[(b + 1) % 4] for b in range(B)])
    png = method_grid(images, exps, row_labels=[CLASSES[(b + 1) % 4] for b in range(B)])
    try:
        fig.canvas.draw()
        _check_legible(fig, lay, png)
        titles = {t.get_text().replace("\n", "") for t in _texts(fig)}
        assert all(name in titles for name in exps)  # every method is named once per band
        assert lay.columns * lay.bands >= n_methods + lay.bands  # every method has a panel (plus the images)
        assert lay.columns <= CONTENT_WIDTH_PX // 150 + 1
    finally:
        plt.close(fig)


def test_head_grid_text_is_legible_and_never_overlaps() -> None:
    import matplotlib.pyplot as plt

    from traitlens.viz.grids import head_grid_figure

    for R in (3, 12):
        maps = torch.rand(R, 4, 4, generator=torch.Generator().manual_seed(R))
        fig, lay = head_grid_figure(maps, image=torch.rand(3, 16, 16))
        try:
            fig.canvas.draw()
            _check_legible(fig, lay, head_grid(maps, image=torch.rand(3, 16, 16)))
        finally:
            plt.close(fig)


def test_grid_layout_keeps_text_size_and_wraps_columns() -> None:
    lay = grid_layout(17, width_px=1100, panel_px=175, lead_columns=1)
    assert (lay.columns, lay.bands) == (6, 4)  # 5 methods + the image per band, 17 = 5 + 4 + 4 + 4
    assert lay.width_px == 6 * 175  # whole panels: never wider than the report
    assert lay.font_px(lay.width_px) == pytest.approx(12.0) and lay.font_px(lay.width_px / 2) == pytest.approx(6.0)
    assert lay.font_px(2000) == pytest.approx(12.0)  # a wide screen never enlarges an <img> past its size
    assert grid_layout(2, lead_columns=1).width_px == 3 * 175  # a few panels keep their size
    with pytest.raises(ValueError, match="legible"):
        grid_layout(3, label_px=8)


# ----------------------------------------------------------------------------- colour bars with numbers


@pytest.mark.parametrize("signed", [True, False])
def test_colour_bar_numbers_are_the_scale_colorize_draws(signed: bool) -> None:
    from matplotlib.colors import Normalize

    m = np.array([[-0.004, 0.001], [0.0025, 0.0005]]) if signed else np.array([[0.2, 1.7], [0.9, 0.5]])
    lo, hi = map_range(m, signed)
    assert (lo, hi) == ((-0.004, 0.004) if signed else (0.2, 1.7))
    cmap = SIGNED_CMAP if signed else SEQUENTIAL_CMAP
    np.testing.assert_allclose(colorize(m, signed), cmap(Normalize(lo, hi)(m))[..., :3], atol=1e-6)


def test_every_map_panel_carries_its_numbers() -> None:
    import matplotlib.pyplot as plt

    exps = _explanations(2, 1, targets=CLASSES)
    first = exps[next(iter(exps))]
    assert first.signed
    first.maps[:] = 0.0
    first.maps[0, 0, 0, 0] = -0.25  # signed: −0.25 … 0.25, 0 in the middle
    fig, _ = method_grid_figure(torch.rand(1, 3, 16, 16), exps)
    try:
        bars = [ax for ax in fig.axes if ax.get_xticklabels() and any(t.get_text() for t in ax.get_xticklabels())]
        assert len(bars) == 2
        assert [t.get_text() for t in bars[0].get_xticklabels()] == ["−0.25", "0", "0.25"]
        second = exps[list(exps)[1]].maps[0, 0]
        assert [t.get_text() for t in bars[1].get_xticklabels()] == [tick_label(float(second.min())),
                                                                     tick_label(float(second.max()))]
    finally:
        plt.close(fig)


@pytest.mark.parametrize(("value", "text"), [(0.0123, "0.012"), (-1.5e-5, "−1.5e−5"), (123.4, "1.2e2"),
                                             (0.0, "0"), (1.0, "1"), (-0.25, "−0.25")])
def test_tick_labels_are_short(value: float, text: str) -> None:
    assert tick_label(value) == text
