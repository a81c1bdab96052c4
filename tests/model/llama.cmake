# Llama backbone, llama2.c reader, BPE tokenizer, safetensors and hooks (model/ issue 4).
# Fixtures: tests/fixtures/llama/ from scripts/make_llama_golden.py (Debian python3-torch).
dt_add_test(NAME test_llama SOURCES test_llama.cpp LIBS dt_model NP 1)
dt_add_test(NAME test_llama_stories SOURCES test_llama_stories.cpp
            LIBS dt_model nlohmann_json::nlohmann_json NP 1)
dt_add_test(NAME test_safetensors SOURCES test_safetensors.cpp LIBS dt_model NP 1)
dt_add_test(NAME test_hooks SOURCES test_hooks.cpp LIBS dt_model NP 1)
foreach(t test_llama test_llama_stories test_safetensors test_hooks)
  target_compile_definitions(${t} PRIVATE DT_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
endforeach()
