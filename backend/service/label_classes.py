"""The label classes of a project being trained: names and colours, added, renamed, recoloured and
deleted as in ilastik (new classes are called "Label N" and take ilastik's default colours)."""

from __future__ import annotations

import dataclasses

from backend.errors import UserError
from backend.io.project import MAX_CLASSES, Project

# ilastik's default label colours (volumina's default16_new after its transparent entry), class 1 first
ILASTIK_COLORS = ((255, 225, 25), (0, 130, 200), (230, 25, 75), (70, 240, 240), (60, 180, 75), (250, 190, 190),
                  (170, 110, 40), (145, 30, 180), (0, 128, 128), (245, 130, 48), (240, 50, 230), (210, 245, 60),
                  (255, 215, 180), (230, 190, 255), (128, 128, 128))


def with_classes(project: Project, names: tuple[str, ...], colors: tuple[tuple[int, int, int], ...]) -> Project:
    """``project`` with other label classes (its prediction colours follow the label colours)."""
    return dataclasses.replace(project, label_names=tuple(names), label_colors=tuple(colors),
                               pmap_colors=tuple(colors))


def add_class(project: Project) -> Project:
    """One more class, named and coloured as ilastik names and colours a new label."""
    names = project.label_names
    if len(names) >= MAX_CLASSES:
        raise UserError(f"a project holds at most {MAX_CLASSES} label classes")
    number = len(names) + 1
    while f"Label {number}" in names:
        number += 1
    color = ILASTIK_COLORS[len(names) % len(ILASTIK_COLORS)]
    return with_classes(project, names + (f"Label {number}",), project.label_colors + (color,))


def rename_class(project: Project, label: int, name: str) -> Project:
    """Class ``label`` (from 1) called ``name``; refuses empty names and names another class has."""
    name = name.strip()
    others = [n for i, n in enumerate(project.label_names, start=1) if i != label]
    if not name:
        raise UserError("a class needs a name")
    if name in others:
        raise UserError(f"another class is already called {name!r}")
    names = list(project.label_names)
    names[label - 1] = name
    return with_classes(project, tuple(names), project.label_colors)


def recolour_class(project: Project, label: int, color: tuple[int, int, int]) -> Project:
    """Class ``label`` (from 1) shown in ``color``."""
    colors = list(project.label_colors)
    colors[label - 1] = tuple(int(c) for c in color[:3])
    return with_classes(project, project.label_names, tuple(colors))


def delete_class(project: Project, label: int) -> Project:
    """The project without class ``label`` (from 1); the classes after it move down by one. Two remain."""
    if len(project.label_names) <= 2:
        raise UserError("a project keeps at least two label classes")
    keep = [i for i in range(len(project.label_names)) if i != label - 1]
    return with_classes(project, tuple(project.label_names[i] for i in keep),
                        tuple(project.label_colors[i] for i in keep))
