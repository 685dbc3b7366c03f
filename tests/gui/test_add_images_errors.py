"""File > Add images: a reader failing with an unexpected error puts one line on the image's row, not a
traceback on the GUI thread."""

from ilastik_desktop._qt.panels import lanes
from tests.helpers import wait_for


def test_an_unexpected_reader_error_is_one_line_on_the_row(qtbot, monkeypatch, tmp_path):
    def failing_reader(image: str, *args):
        raise ValueError("buffer size must be a multiple of element size\nmore detail")

    monkeypatch.setattr(lanes, "open_source", failing_reader)
    posted = []
    image = str(tmp_path / "odd.tif")
    dialog = lanes.AddImagesDialog([image], lambda call, *args: posted.append((call, args)))
    qtbot.addWidget(dialog)
    assert wait_for(lambda: posted, 10)
    for call, args in posted:  # on the GUI thread, as the window's post does
        call(*args)
    assert dialog.table.item(0, 2).text() == f"{image}: cannot be read (buffer size must be a multiple of " \
                                              "element size)"
    assert dialog.table.item(0, 1).text() == "" and not dialog.guessing()
