"""nanogate: a self-hosted gateway for Gemini image models."""

__version__ = "0.1.0"
