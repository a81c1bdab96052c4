# sparse/: index codec, top-k masks, Fisher, FISH and DSEE (one rank), and their distributed
# equivalences (Fisher over 2/4 ranks, values-only training against dense masked training).
dt_add_test(NAME test_sparse SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_sparse.cpp ${CMAKE_CURRENT_LIST_DIR}/test_sparse_util.cpp
            LIBS dt_launch dt_sparse dt_model NP 1 MPI_MAIN)
dt_add_test(NAME test_sparse_dist SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_sparse_dist.cpp ${CMAKE_CURRENT_LIST_DIR}/test_sparse_util.cpp
            LIBS dt_launch dt_sparse dt_dist dt_model NP 1 2 4)
# Not a test: prints the forward+backward times of the W + scatter(values) variants (sparse/scatter.h).
add_executable(bench_sparse_scatter ${CMAKE_CURRENT_LIST_DIR}/bench_scatter.cpp)
target_link_libraries(bench_sparse_scatter PRIVATE dt_sparse)
set_target_properties(bench_sparse_scatter PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bench)
