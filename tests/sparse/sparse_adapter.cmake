# SparseAdapter: closed-form counts, each pruning score against a reference, masks equal on every rank,
# ratio 0 == the dense adapter, masks restored from what a checkpoint stores (np 1, 2, 4).
dt_add_test(NAME test_sparse_adapter SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_sparse_adapter.cpp
            ${CMAKE_CURRENT_LIST_DIR}/test_sparse_util.cpp LIBS dt_launch dt_sparse dt_dist dt_model NP 1 2 4)
