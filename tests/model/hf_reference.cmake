# Hugging Face transformers as the reference (issue 14): the fixture runs tests/hf/make_hf_reference.py with the
# venv's python (transformers installed by scripts/setup.sh), which has HF save and run small BERT / T5 v1.0 / T5
# v1.1 / Llama models and the real all-MiniLM-L6-v2 (models/, scripts/fetch-models.sh); test_hf_reference loads
# each saved directory with model::load_backbone and compares every output.
set(DT_HF_REFERENCE_DIR ${CMAKE_BINARY_DIR}/hf_reference)
add_test(NAME hf_reference_setup
         COMMAND ${DT_PYTHON} ${PROJECT_SOURCE_DIR}/tests/hf/make_hf_reference.py ${DT_HF_REFERENCE_DIR}
                 --minilm ${PROJECT_SOURCE_DIR}/models/all-minilm-l6-v2)
set_tests_properties(hf_reference_setup PROPERTIES FIXTURES_SETUP hf_reference TIMEOUT 300)
dt_add_test(NAME test_hf_reference SOURCES test_hf_reference.cpp LIBS dt_model NP 1)
set_tests_properties(test_hf_reference PROPERTIES FIXTURES_REQUIRED hf_reference)
# (The folder is compiled in: the test runs the same from ctest or by hand.)
target_compile_definitions(test_hf_reference PRIVATE DT_HF_REFERENCE_DIR="${DT_HF_REFERENCE_DIR}")
