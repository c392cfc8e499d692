"""Emulators of the two ways TensorRT-LLM is served, for tests on machines without an NVIDIA GPU.

`python -m plugins.tensorrt_llm.emulator --port P --mode trtllm_serve|triton` runs either
trtllm-serve's OpenAI server or Triton's generate extension in front of the TensorRT-LLM
ensemble, each with its server's routes, fields, framing, errors and metrics, on the shared
emulator machinery (plugins/emulation). Every wire detail names its source where it is built.
"""
