# dist/ data side: GLUE reading and encoding, the sampler, metrics, and the optimizer.
# Pure suites run on one rank; the metrics gather runs on 2 and 4 (tests/mpi_main.cpp).
dt_add_test(NAME test_glue SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_glue.cpp LIBS dt_dist NP 1)
dt_add_test(NAME test_glue_tokenizers SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_glue_tokenizers.cpp
            LIBS dt_dist NP 1)
dt_add_test(NAME test_sampler SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_sampler.cpp LIBS dt_dist NP 1)
dt_add_test(NAME test_metrics SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_metrics.cpp LIBS dt_dist NP 1)
dt_add_test(NAME test_metrics_dist SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_metrics_dist.cpp
            LIBS dt_dist NP 2 4)
dt_add_test(NAME test_optim SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_optim.cpp
            LIBS dt_dist nlohmann_json::nlohmann_json NP 1)
