"""An opened project lane: its project, raw data, pipeline and gateway."""

from __future__ import annotations

from dataclasses import dataclass

from backend.dataset import open_lane
from backend.export import default_block_shape
from backend.gateway import Gateway
from backend.pipeline import Pipeline, build_pipeline
from backend.project import Project, ThresholdSettings, open_project
from backend.sources import DataSource
from ilastik_desktop.services import Services


@dataclass
class Document:
    """Everything the window shows for one project lane."""

    project: Project
    source: DataSource
    pipeline: Pipeline
    gateway: Gateway

    @property
    def threshold(self) -> ThresholdSettings:
        """The project's thresholding parameters, or ilastik's defaults."""
        return self.project.threshold or ThresholdSettings()

    def close(self) -> None:
        """Release the gateway's claims and threads."""
        self.gateway.close()


def open_document(path: str, services: Services, raw_data: str | None = None, lane: int = 0,
                  input_axes: str | None = None) -> Document:
    """Open a project lane for viewing (raises UserError subclasses with a clear message)."""
    project = open_project(path)
    source = open_lane(project, lane, raw_data, input_axes)
    pipeline = build_pipeline(project, source.channels, source.shape[1] > 1)
    gateway = services.gateway(source, pipeline, default_block_shape(source.spatial_shape))
    return Document(project, source, pipeline, gateway)
