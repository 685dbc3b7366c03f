"""Run by the client matrix in the napari venv: ``read_napari.py URL OUT Z0:Z1,Y0:Y1,X0:X1 SOURCE...`` opens
``URL/SOURCE.zarr`` in a napari viewer with the napari-ome-zarr plugin, saves that region of the layers it
made (one per channel, stacked in their order) as ``OUT/SOURCE.npy`` and prints the versions and each
source's layer names and colours (their colormap's brightest) as JSON.

The viewer is napari's ViewerModel: the viewer without its Qt canvas, whose OpenGL context Qt's offscreen
platform cannot give (``napari.Viewer(show=False)`` fails there in vispy's ``glGetParameter``)."""

import json
import os
import sys

import napari
import numpy as np
from napari.components import ViewerModel
from napari.plugins import _initialize_plugins


def main() -> None:
    """Open each source, save its region and tell what napari made of it."""
    url, out, region, *sources = sys.argv[1:]
    window = tuple(slice(*map(int, bounds.split(":"))) for bounds in region.split(","))
    _initialize_plugins()  # what napari.Viewer does first: discovers the installed reader plugins
    layers = {}
    for source in sources:
        viewer = ViewerModel()
        opened = viewer.open(f"{url}/{source}.zarr", plugin="napari-ome-zarr")
        full = [layer.data[0] if layer.multiscale else layer.data for layer in opened]  # its finest level
        np.save(os.path.join(out, f"{source}.npy"), np.stack([np.asarray(data[window]) for data in full]))
        layers[source] = [{"name": layer.name, "colour": [round(float(v) * 255) for v in layer.colormap.colors[-1][:3]]}
                          for layer in opened]
    print(json.dumps({"napari": napari.__version__, "layers": layers}))


if __name__ == "__main__":
    main()
