"""The design page's picture of the layers is the one the code draws today."""

from __future__ import annotations

from tests.docs import diagram
from tests.layout import test_layers as layout


def test_the_picture_on_the_design_page_is_generated_from_the_code():
    assert diagram.on_page() == diagram.block(), (
        "docs/design.md's layer picture is out of date; run `.venv/bin/python -m tests.docs.diagram --write`. "
        "Today's picture:\n" + diagram.render())


def test_the_picture_names_every_layer_and_every_core_module():
    picture = diagram.render()
    for package, (name, rank) in layout.LAYERS.items():
        assert f"[{rank}] {name}" in picture and package in picture
    for module in layout.modules():
        if layout.layer(module) == "core" and module.count(".") == 1:
            assert module.split(".")[1] in picture, module


def test_a_new_layer_changes_the_picture(monkeypatch):
    """The comparison can fail: a layer the code gains shows up in the picture, so the page would differ."""
    before = diagram.render()
    monkeypatch.setitem(layout.LAYERS, "nnpipe.serving", ("serving", 7))
    after = diagram.render()
    assert after != before and "[7] serving" in after
