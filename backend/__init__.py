"""Qt-free core of ilastik-desktop: projects, data sources, geometry, features, forests, export."""
