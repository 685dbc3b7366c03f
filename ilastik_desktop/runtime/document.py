"""An opened project lane: its project, raw data, pipeline and gateway."""

from __future__ import annotations

from dataclasses import dataclass

from backend.compute.pipeline import Pipeline
from backend.compute.threshold import ThresholdSettings, default_settings
from backend.io.dataset import open_lane
from backend.io.project import Project, open_project
from backend.io.project_pipeline import build_pipeline
from backend.io.sources import DataSource
from backend.io.training import label_blocks
from backend.service.export import default_block_shape
from backend.service.gateway import Gateway
from backend.service.labels import LabelStore
from backend.service.rendering import raw_display_range
from ilastik_desktop.runtime.services import Services


@dataclass
class Document:
    """Everything the window shows for one project lane."""

    project: Project
    source: DataSource
    pipeline: Pipeline
    gateway: Gateway
    labels: LabelStore
    display_range: tuple[float, float] = (0.0, 255.0)
    lane: int = 0  # which of the project's lanes

    @property
    def threshold(self) -> ThresholdSettings:
        """The project's thresholding parameters, or ilastik's defaults on the first non-background class."""
        return self.project.threshold or default_settings(self.project.label_names)

    def close(self) -> None:
        """Release the gateway's claims and threads."""
        self.gateway.close()


def open_document(path: str, services: Services, raw_data: str | None = None, lane: int = 0,
                  input_axes: str | None = None) -> Document:
    """Open a project lane for viewing (raises UserError subclasses with a clear message)."""
    project = open_project(path)
    source = open_lane(project, lane, raw_data, input_axes)
    pipeline = build_pipeline(project, source.channels, source.shape[1] > 1, require_classifier=False)  # untrained:
    # raw data and labels only, until the Training tab trains one
    display_range = raw_display_range(source)
    # labels and the gateway are made here, not on the GUI thread
    labels = LabelStore.from_blocks(source.spatial_shape, label_blocks(project, source, lane),
                                    services.config.training.undo_steps)
    gateway = services.gateway(source, pipeline, default_block_shape(source.spatial_shape))
    return Document(project, source, pipeline, gateway, labels, display_range, lane)
