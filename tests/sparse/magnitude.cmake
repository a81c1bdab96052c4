# top_k_magnitude (sparse/magnitude.h): bit-identical to top_k_mask on float32 |W| (ties, bf16 / float32,
# global and per tensor), split across 1, 2 and 4 ranks.
dt_add_test(NAME test_magnitude_topk SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_magnitude_topk.cpp
                    ${CMAKE_CURRENT_LIST_DIR}/test_sparse_util.cpp
            LIBS dt_launch dt_sparse dt_dist dt_model NP 1 2 4)
# Not a test: old against new magnitude selection, side by side (bench/results/magnitude_topk.md).
add_executable(bench_magnitude_topk ${CMAKE_CURRENT_LIST_DIR}/bench_magnitude.cpp)
target_link_libraries(bench_magnitude_topk PRIVATE dt_sparse dt_comm MPI::MPI_CXX)
set_target_properties(bench_magnitude_topk PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bench)
