"""The viewer's state without Qt: position, raw channel and contrast, layers, live update.

Widgets observe it through its psygnal signals and change it only through its methods, like napari's
model layer; nothing here imports Qt, so it is tested and reasoned about on its own. Signals are emitted
on the thread that changed the model (the GUI thread: every change comes from a widget).
"""

from __future__ import annotations

from dataclasses import dataclass

from psygnal import Signal

RAW, PROBABILITIES, SEGMENTATION, OBJECTS = "Raw", "Probabilities", "Simple Segmentation", "Objects"
UNCERTAINTY = "Uncertainty"
LABELS = "Labels"  # the painted labels: drawn above every result, whatever the order of the layers
UNCERTAINTY_COLOR = (0, 255, 255)  # cyan where the classifier hesitates: where labels help most
AXES = "tzyx"
CLASSES_CHANGED = "classes"  # what layers_changed reports when the probability layers were replaced
ORDER_CHANGED = "order"  # ... and when layers were moved up or down


@dataclass
class Layer:
    """One displayed layer; ``index`` is the class of a probability layer."""

    name: str
    kind: str
    index: int = 0
    color: tuple[int, int, int] = (255, 255, 255)
    visible: bool = True
    opacity: float = 1.0


class ViewerModel:
    """What is shown: a point in ``(t, z, y, x)``, the raw channel and contrast, and the layers.

    ``position_changed(axis)``, ``layers_changed(what)`` (a layer's name, CLASSES_CHANGED, ORDER_CHANGED or
    "live") and ``display_changed()`` tell the views what to redraw.
    """

    position_changed = Signal(str)
    layers_changed = Signal(str)
    display_changed = Signal()

    def __init__(self, shape: tuple[int, int, int, int], channels: int, layers: list[Layer],
                 contrast: tuple[float, float] = (0.0, 255.0)):
        self.shape, self.channels, self.layers = shape, channels, layers
        self.position = [0] + [n // 2 for n in shape[1:]]
        self.channel = 0
        self.contrast = contrast
        self.colormap = COLORMAPS[0]
        self.live = True

    @property
    def volumetric(self) -> bool:
        """True when the image has more than one z slice."""
        return self.shape[1] > 1

    def move(self, axis: str, value: int) -> None:
        """Set one coordinate (clamped to the image)."""
        i = AXES.index(axis)
        value = min(max(int(value), 0), self.shape[i] - 1)
        if value != self.position[i]:
            self.position[i] = value
            self.position_changed.emit(axis)

    def step(self, axis: str, delta: int) -> None:
        """Move ``delta`` slices along ``axis``."""
        self.move(axis, self.position[AXES.index(axis)] + delta)

    def set_layer(self, name: str, visible: bool | None = None, opacity: float | None = None) -> None:
        """Show, hide or fade a layer."""
        layer = self.layer(name)
        if visible is not None:
            layer.visible = visible
        if opacity is not None:
            layer.opacity = min(max(float(opacity), 0.0), 1.0)
        self.layers_changed.emit(name)

    def set_classes(self, names, colors) -> None:
        """One probability layer per class again (after classes were added, renamed, recoloured or deleted);
        each class number keeps its visibility and opacity."""
        old = {layer.index: layer for layer in self.layers if layer.kind == PROBABILITIES}
        classes = [Layer(f"Probability {name}", PROBABILITIES, i, tuple(colors[i][:3]),
                         old[i].visible if i in old else True, old[i].opacity if i in old else PROBABILITY_OPACITY)
                   for i, name in enumerate(names)]
        others = [layer for layer in self.layers if layer.kind != PROBABILITIES]
        self.layers = others[:1] + classes + others[1:]  # after the raw data, as default_layers orders them
        self.layers_changed.emit(CLASSES_CHANGED)

    def move_layer(self, name: str, delta: int) -> None:
        """Draw layer ``name`` ``delta`` places higher (positive) or lower; the raw data stays at the bottom."""
        layer = self.layer(name)
        if layer.kind == RAW:
            return
        old = self.layers.index(layer)
        new = min(max(old + int(delta), 1), len(self.layers) - 1)
        if new != old:
            self.layers.insert(new, self.layers.pop(old))
            self.layers_changed.emit(ORDER_CHANGED)

    def layer(self, name: str) -> Layer:
        """The layer called ``name``."""
        return next(layer for layer in self.layers if layer.name == name)

    def set_channel(self, channel: int) -> None:
        """Show another channel of the raw data."""
        self.channel = min(max(int(channel), 0), self.channels - 1)
        self.display_changed.emit()

    def set_contrast(self, low: float, high: float) -> None:
        """The raw display range."""
        self.contrast = (float(low), float(max(high, low + 1e-6)))
        self.display_changed.emit()

    def set_colormap(self, name: str) -> None:
        """The raw data's colour map (one of COLORMAPS)."""
        if name not in COLORMAPS:
            raise ValueError(f"unknown colour map {name!r}")
        self.colormap = name
        self.display_changed.emit()

    def set_live(self, live: bool) -> None:
        """Compute overlays as the view moves (True) or only show what is cached."""
        self.live = bool(live)
        self.layers_changed.emit("live")


COLORMAPS = ("grey", "viridis", "magma", "inferno", "cividis", "turbo")
PROBABILITY_OPACITY = 0.25  # ilastik's default for its prediction layers: the raw data stays readable


def default_layers(label_names, colors) -> list[Layer]:
    """Raw, one probability layer per class in the project's colours, uncertainty, segmentation, objects and
    the painted labels."""
    layers = [Layer("Raw", RAW)]
    layers += [Layer(f"Probability {name}", PROBABILITIES, i, tuple(colors[i]), True, PROBABILITY_OPACITY)
               for i, name in enumerate(label_names)]
    layers += [Layer("Uncertainty", UNCERTAINTY, color=UNCERTAINTY_COLOR, visible=False, opacity=0.6),
               Layer("Simple Segmentation", SEGMENTATION, visible=False, opacity=0.5),
               Layer("Objects", OBJECTS, visible=False, opacity=0.6), Layer("Labels", LABELS, opacity=0.8)]
    return layers
