# `deltatune commbench` (launch/commbench.cpp): its arithmetic as a unit test, and the executable end to
# end under mpirun on 2 and 4 ranks (0 wrong elements for every op × datatype, the JSON contract).
dt_add_test(NAME test_commbench SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_commbench.cpp LIBS dt_launch NP 1)
# Each run costs a few seconds of start-up, so not every pair runs at every size of job: the 16-bit
# types (whose value patterns differ, to stay exact) with every op on 2 ranks, the rest with all-reduce.
set(_ops allreduce allgather broadcast reducescatter)
set(_np2_pairs allreduce:double allreduce:int32 allreduce:int64)
foreach(op ${_ops})
  list(APPEND _np2_pairs ${op}:float ${op}:bfloat16 ${op}:half)
endforeach()
set(_np4_pairs allreduce:bfloat16 allgather:float broadcast:float reducescatter:half allreduce:int64)
foreach(np 2 4)
  add_test(NAME commbench_np${np}
           COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/commbench_check.sh ${MPIEXEC_EXECUTABLE} $<TARGET_FILE:deltatune>
                   ${np} ${_np${np}_pairs})
  set_tests_properties(commbench_np${np} PROPERTIES ENVIRONMENT "${DT_TEST_ENV}" PROCESSORS ${np} TIMEOUT 600)
endforeach()
