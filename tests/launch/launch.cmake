dt_add_test(NAME test_launch SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_cli.cpp LIBS dt_launch NP 1)
# The executable's contract (exit codes, one-line errors, --help of every subcommand) checked end to end.
add_test(NAME cli_contract COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/cli_contract.sh $<TARGET_FILE:deltatune>)
set_tests_properties(cli_contract PROPERTIES ENVIRONMENT "${DT_TEST_ENV}" TIMEOUT 300)
# Every method's defaults on every bundled backbone and the real MiniLM encoder (issue 14, a few steps each).
add_test(NAME method_defaults
         COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/method_defaults.sh $<TARGET_FILE:deltatune> ${PROJECT_SOURCE_DIR})
set_tests_properties(method_defaults PROPERTIES ENVIRONMENT "${DT_TEST_ENV}" TIMEOUT 900 PROCESSORS 2)
