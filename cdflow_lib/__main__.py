"""python -m cdflow_lib: the ``cdflow`` command (see cdflow_lib.cli)."""
from .cli import main

raise SystemExit(main())
