"""Upstream simulator: a local stand-in for Google's Gemini REST API, with fault injection.

It also impersonates the resellers nanogate can route to: both task API forms (tasks.py) and
OpenAI's chat completions and images generations (openai.py).

Run it with `python -m tests.simulator --port 0`, or in-process with `start()`.
"""

from tests.simulator.faults import Fault
from tests.simulator.server import STATE_KEY, SimState, build_app, start

__all__ = ["STATE_KEY", "Fault", "SimState", "build_app", "start"]
