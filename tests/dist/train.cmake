# End to end: np=2 × batch B trains like np=1 × batch 2B, for every method; bytes per step = trainable bytes.
add_test(NAME train_equivalence
         COMMAND /usr/bin/python3 ${CMAKE_CURRENT_LIST_DIR}/train_equivalence.py $<TARGET_FILE:deltatune> ${PROJECT_SOURCE_DIR})
set_tests_properties(train_equivalence PROPERTIES ENVIRONMENT "${DT_TEST_ENV}" TIMEOUT 900 PROCESSORS 2)
