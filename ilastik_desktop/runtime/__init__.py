"""The application without Qt: settings, compute services, local workers, documents and the controllers
(opening, training, serving) that the window binds its widgets to."""
