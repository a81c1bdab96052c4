# dist/ data side: the sampler, metrics, and the optimizer (GLUE reading lives in tests/tasks/).
dt_add_test(NAME test_sampler SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_sampler.cpp LIBS dt_dist NP 1)
dt_add_test(NAME test_metrics SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_metrics.cpp LIBS dt_dist NP 1)
dt_add_test(NAME test_optim SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_optim.cpp
            LIBS dt_dist nlohmann_json::nlohmann_json NP 1)
