"""File > New project: from an image (axes guessed, editable), an untrained project showing its raw data,
then painted, trained and saved as a project that reopens trained."""

import numpy as np
import pytest

from backend.io.project import open_project
from backend.io.synthetic import blob_volume

pytestmark = pytest.mark.timeout(300)


def test_a_new_project_from_an_image_is_trained_and_saved(qtbot, window, tmp_path):
    image, mask = blob_volume((24, 80, 80), seed=4)
    np.save(tmp_path / "cells.npy", image)
    dialog = window.ask_new_project()
    dialog.set_image(str(tmp_path / "cells.npy"))
    assert dialog.axes.text() == "zyx" and dialog.project.text() == str(tmp_path / "cells.ilp")
    assert "24 x 80 x 80 uint8 (axes guessed" in dialog.about.text()
    dialog.axes.setText("zyxc")
    dialog.create()
    assert "the image has 3 axes, 'zyxc' names 4" in dialog.message.text() and not (tmp_path / "cells.ilp").exists()
    dialog.axes.setText("zyx")
    with qtbot.waitSignal(window.opened, timeout=60_000):
        dialog.create()
    document = window.document
    assert document.project.path == str(tmp_path / "cells.ilp") and document.project.classifier is None
    assert document.project.label_names == ("Label 1", "Label 2")
    qtbot.waitUntil(window.loader.is_settled, timeout=60_000)
    assert window.loader.is_complete("xy", "Raw") and ("xy", "Probabilities") not in window.loader.slots
    assert open_project(document.project.path).features.compute_in_2d[4] is False  # 3.5 fits 24 slices in 3D

    z = window.model.position[1]
    inside = np.argwhere(mask[z])
    outside = np.argwhere(~mask[z])
    training, xy = window.training, window.views[0]
    training.panel.live.setChecked(False)
    training.panel.classes.button(1).setChecked(True)
    for point in outside[::40]:  # dabs: a stroke through all of them would be a line across the cells
        xy.stroked.emit([tuple(point)])
    training.panel.classes.button(2).setChecked(True)
    for point in inside[::10]:
        xy.stroked.emit([tuple(point)])
    with qtbot.waitSignal(training.trained, timeout=120_000) as done:
        training.controller.train()
    assert done.args[0].startswith("trained"), done.args[0]
    qtbot.waitUntil(lambda: window.loader.is_settled() and window.loader.is_complete("xy", "Probabilities"),
                    timeout=120_000)
    probabilities, _ = window.loader.shown("xy", "Probabilities")
    assert ((probabilities[..., 1] > 0.5) == mask[z]).mean() > 0.9  # the cells found from a few strokes
    with qtbot.waitSignal(training.saved, timeout=60_000):
        window.save_action.trigger()
    reopened = open_project(document.project.path)
    assert reopened.classifier.tree_count == 100 and reopened.classifier.known_labels == (1, 2)

    again = window.ask_new_project()
    again.set_image(str(tmp_path / "cells.npy"))
    again.create()
    assert "already exists" in again.message.text()
    again.reject()
