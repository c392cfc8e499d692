"""An emulator of Hugging Face TGI's HTTP API for tests: `python -m plugins.tgi.emulator --port P`.

It speaks TGI's routes, fields, SSE framing, error bodies and status codes, read from
huggingface/text-generation-inference (router/src/server.rs, router/src/lib.rs,
router/src/validation.rs, router/src/infer/mod.rs) and checked against responses recorded
from real servers (plugins/tgi/fixtures). The model is the shared deterministic fake.
"""
