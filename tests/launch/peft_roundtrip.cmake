# HF PEFT as the reference for `export --format peft` and `train --init-from` (issue 14): adapters go both
# ways between deltatune and peft.PeftModel on the real all-MiniLM-L6-v2 (models/, scripts/fetch-models.sh)
# with the same logits, and the trainable counts equal PEFT's (tests/hf/peft_roundtrip.py).
add_test(NAME peft_roundtrip
         COMMAND ${DT_PYTHON} ${PROJECT_SOURCE_DIR}/tests/hf/peft_roundtrip.py $<TARGET_FILE:deltatune>
                 ${PROJECT_SOURCE_DIR})
set_tests_properties(peft_roundtrip PROPERTIES ENVIRONMENT "${DT_TEST_ENV}" TIMEOUT 900 PROCESSORS 2)
