"""Run by the client matrix in the zarr-python 2 venv: ``read_zarr2.py URL OUT Z0:Z1,Y0:Y1,X0:X1 SOURCE...``
reads that region of each source's full-resolution array (every channel) at ``URL/SOURCE/0`` over fsspec's
HTTP store, saves it as ``OUT/SOURCE.npy`` and prints the versions it ran with as JSON."""

import json
import os
import sys

import fsspec
import numpy as np
import zarr


def main() -> None:
    """Read and save each source's region."""
    url, out, region, *sources = sys.argv[1:]
    window = tuple(slice(*map(int, bounds.split(":"))) for bounds in region.split(","))
    for source in sources:
        array = zarr.open_array(f"{url}/{source}/0", mode="r")
        np.save(os.path.join(out, f"{source}.npy"), array[(Ellipsis, *window)])
    print(json.dumps({"zarr": zarr.__version__, "fsspec": fsspec.__version__}))


if __name__ == "__main__":
    main()
