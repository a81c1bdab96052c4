# `deltatune export` (HF PEFT adapter, merged safetensors) and `deltatune eval` end to end: trains a few
# steps of lora / ia3 / fish / prompt on stories260K + SST-2 and checks the files against an independent
# torch reference, eval against the training log at np 1 and 2, and the refusals (exit 2).
add_test(NAME export_eval
         COMMAND ${DT_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/export_eval.py $<TARGET_FILE:deltatune> ${PROJECT_SOURCE_DIR})
set_tests_properties(export_eval PROPERTIES ENVIRONMENT "${DT_TEST_ENV}" TIMEOUT 900 PROCESSORS 2)
