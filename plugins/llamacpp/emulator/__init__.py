"""An emulator of llama.cpp's llama-server, for fault-injection tests without a model.

`python -m plugins.llamacpp.emulator --port P [knobs]` speaks the routes, fields, SSE framing,
error bodies, /metrics names and /slots shape recorded from a real llama-server
(plugins/llamacpp/fixtures/), on the shared emulator machinery (plugins/emulation).
"""
