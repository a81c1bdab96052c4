# End to end: np=2 × batch B trains like np=1 × batch 2B, for every method; bytes per step = trainable bytes.
add_test(NAME train_equivalence
         COMMAND ${DT_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/train_equivalence.py $<TARGET_FILE:deltatune> ${PROJECT_SOURCE_DIR})
set_tests_properties(train_equivalence PROPERTIES ENVIRONMENT "${DT_TEST_ENV}" TIMEOUT 900 PROCESSORS 2)
# The same on the GPU (label gpu): every method trains with --device cuda; skipped without a GPU.
add_test(NAME train_equivalence_gpu
         COMMAND ${DT_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/train_equivalence.py $<TARGET_FILE:deltatune> ${PROJECT_SOURCE_DIR} cuda)
set_tests_properties(train_equivalence_gpu PROPERTIES ENVIRONMENT "${DT_TEST_ENV}" TIMEOUT 900 PROCESSORS 2
                     LABELS gpu SKIP_RETURN_CODE 77)
