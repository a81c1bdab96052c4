# Every *.cpp here joins one table-driven executable (method rows register from their own files).
file(GLOB _peft_tests CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/*.cpp)
dt_add_test(NAME test_peft SOURCES ${_peft_tests} LIBS dt_launch dt_peft dt_sparse dt_model NP 1)
