# T5/BERT backbones, named configs and the meta description, SentencePiece/WordPiece tokenizers.
# Golden fixtures: tests/fixtures/{t5,bert}/, written by scripts/make_t5_bert_golden.py.
dt_add_test(NAME test_model_t5
  SOURCES test_config.cpp test_t5_golden.cpp test_t5_hooks.cpp test_bert_golden.cpp test_tokenizer.cpp
          test_cpu_bf16_linear.cpp
  LIBS dt_model
  NP 1)
target_compile_definitions(test_model_t5 PRIVATE DT_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
