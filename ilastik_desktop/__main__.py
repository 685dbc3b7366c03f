"""``python -m ilastik_desktop`` runs the command line."""

from ilastik_desktop.cli.main import main

raise SystemExit(main())
