"""The folder in which a :class:`~backend.distributed.local_executor.LocalExecutor` hands its pipelines to its
compute processes (one ``.npz`` file per pipeline); an :class:`~backend.owned_folder.OwnedFolder`, so the
folders of killed executors are removed when the next one starts.
"""

from __future__ import annotations

import os

from backend.compute.pipeline import Pipeline
from backend.owned_folder import OwnedFolder

PREFIX = "ilastik-desktop-pipelines-"


class PipelineFolder(OwnedFolder):
    """A private folder of pipeline files, locked by this process until :meth:`remove` (or its end)."""

    def __init__(self, parent: str | None = None):
        super().__init__(PREFIX, parent)

    def file(self, fingerprint: str) -> str:
        """Where the pipeline ``fingerprint`` is stored."""
        return os.path.join(self.path, fingerprint + ".npz")

    def save(self, pipeline: Pipeline, fingerprint: str) -> None:
        """Store ``pipeline`` under ``fingerprint`` (complete or not at all: readers never see half a file)."""
        temporary = os.path.join(self.path, f".{fingerprint}.npz")
        pipeline.save(temporary)
        os.replace(temporary, self.file(fingerprint))

    def delete(self, fingerprint: str) -> None:
        """Delete the file of ``fingerprint`` (compute processes that loaded it keep their copy)."""
        try:
            os.unlink(self.file(fingerprint))
        except FileNotFoundError:
            pass

    def fingerprints(self) -> list[str]:
        """The pipelines stored now."""
        return sorted(name[:-4] for name in os.listdir(self.path) if name.endswith(".npz") and name[0] != ".")
