"""Upstream simulator: a local stand-in for Google's Gemini REST API, with fault injection.

Run it with `python -m nanogate.simulator --port 0`, or in-process with `start()`.
"""

from .faults import Fault
from .server import STATE_KEY, SimState, build_app, start

__all__ = ["STATE_KEY", "Fault", "SimState", "build_app", "start"]
