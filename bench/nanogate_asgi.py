"""The app `nanogate serve` builds, for another ASGI server: bench/perf.py serves it with granian
(`granian --interface asgi --factory nanogate_asgi:app`) to compare server stacks.

The settings come from the environment as for `nanogate serve` (NANOGATE_*, NANOGATE_CONFIG);
the database must be migrated and keyed beforehand (`nanogate migrate`, `accounts create`,
`keys create`), which serve does itself. Serve's drain on SIGTERM is uvicorn's and is left out.
"""

from nanogate.core.config import load_settings
from nanogate.core.logs import setup_logging
from nanogate.web.app import create_app
from nanogate.web.front import Front


def app() -> Front:
    settings = load_settings()
    setup_logging(settings.log_level, settings.log_format)
    return create_app(settings)
