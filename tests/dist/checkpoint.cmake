# dist/checkpoint: HDF5 round trip, atomic writes, fault injection (truncation, flipped bytes, a full
# disk via RLIMIT_FSIZE), validation, bitwise resume; the collective side on 2 and 4 ranks; the
# T5-3B FISH 0.5% size check; the cluster/ scripts parse (bash -n).
dt_add_test(NAME test_checkpoint SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_checkpoint.cpp LIBS dt_dist NP 1)
# HDF5 directly, to forge attributes a corrupted or hostile file could hold.
target_include_directories(test_checkpoint PRIVATE ${HDF5_INCLUDE_DIRS})
target_link_libraries(test_checkpoint PRIVATE ${HDF5_C_LIBRARIES})
dt_add_test(NAME test_checkpoint_dist SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_checkpoint_dist.cpp LIBS dt_dist NP 2 4)
dt_add_test(NAME test_checkpoint_scale SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_checkpoint_scale.cpp
            LIBS dt_dist dt_sparse NP 1)
add_test(NAME cluster_scripts_parse
         COMMAND /bin/bash -c "for f in ${PROJECT_SOURCE_DIR}/cluster/*.sh ${PROJECT_SOURCE_DIR}/cluster/*.sbatch; do bash -n \"$f\" || exit 1; done; ls ${PROJECT_SOURCE_DIR}/cluster/*.sbatch >/dev/null")
# End to end through deltatune (issue 8's acceptance): SIGTERM + --resume auto is bitwise, h5dump -H,
# a flipped byte refused, kill -9 of one of 4 ranks. Skipped (77) until train writes checkpoints.
add_test(NAME checkpoint_faults
         COMMAND ${DT_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/checkpoint_faults.py $<TARGET_FILE:deltatune> ${PROJECT_SOURCE_DIR})
set_tests_properties(checkpoint_faults PROPERTIES ENVIRONMENT "${DT_TEST_ENV}" TIMEOUT 1800 PROCESSORS 2
                     SKIP_RETURN_CODE 77)
