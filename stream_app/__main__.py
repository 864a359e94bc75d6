"""``python -m stream_app`` runs the stcast command line."""

from .cli import main

raise SystemExit(main())
