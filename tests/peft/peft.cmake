dt_add_test(NAME test_peft SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_plan.cpp ${CMAKE_CURRENT_LIST_DIR}/test_methods.cpp
            LIBS dt_peft dt_model NP 1)
