"""deepfleet-runtime: what runs on a serving host (engine, OpenAI-compatible server, gateway)."""

__version__ = "0.1.0"
