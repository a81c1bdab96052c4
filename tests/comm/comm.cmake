# comm/: every collective × dtype against closed-form values, async behaviour, counters and errors,
# on 1, 2 and 4 ranks; once more with MPI calls funneled through the MPI thread (the path taken when
# the MPI library lacks MPI_THREAD_MULTIPLE), forced by DELTATUNE_MPI_THREAD_SINGLE=1.
dt_add_test(NAME test_comm
            SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_collectives.cpp ${CMAKE_CURRENT_LIST_DIR}/test_comm_behaviour.cpp
            LIBS dt_comm NP 1 2 4)
add_test(NAME test_comm_funneled_np2
         COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} 2 --oversubscribe --bind-to none
                 $<TARGET_FILE:test_comm>)
set_tests_properties(test_comm_funneled_np2 PROPERTIES
                     ENVIRONMENT "${DT_TEST_ENV};DELTATUNE_MPI_THREAD_SINGLE=1" PROCESSORS 2 TIMEOUT 900)
# The NCCL test alone, labelled gpu: real collectives on a GPU; the clean error where there is none.
add_test(NAME nccl_gpu COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} 1 $<TARGET_FILE:test_comm>
                               --gtest_filter=NcclCommunicator.*)
set_tests_properties(nccl_gpu PROPERTIES ENVIRONMENT "${DT_TEST_ENV}" TIMEOUT 300 LABELS gpu)
