# GradSync spine: bucket assignment (pure, one rank), gradient sync and start-up agreement (2 and 4 ranks).
dt_add_test(NAME test_bucket SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_bucket.cpp LIBS dt_dist NP 1)
dt_add_test(NAME test_grad_sync SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_grad_sync.cpp LIBS dt_dist NP 2 4)
dt_add_test(NAME test_agreement SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_agreement.cpp LIBS dt_dist NP 2 4)
