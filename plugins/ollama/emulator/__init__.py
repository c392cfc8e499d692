"""An emulator of Ollama's server for tests: its native API, NDJSON streams, errors and knobs.

Run it with `python -m plugins.ollama.emulator --port P [--models a,b]`; every wire detail
cites the ollama/ollama source it follows, and tests compare its answers with recorded
responses from Ollama's own docs (plugins/ollama/fixtures).
"""

from plugins.ollama.emulator.app import OllamaEmulator

__all__ = ["OllamaEmulator"]
