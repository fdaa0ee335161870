# find_package(Edgec CONFIG) entry point: with Edgec_DIR set to the output of `edgec cmake-dir`
# (like pybind11's `pybind11 --cmakedir`), this brings in edgec_add_model() from EdgecModel.cmake.
# The arm-none-eabi toolchain file sits beside it: -DCMAKE_TOOLCHAIN_FILE=$(edgec cmake-dir)/arm-none-eabi.cmake
list(APPEND CMAKE_MODULE_PATH ${CMAKE_CURRENT_LIST_DIR})
include(${CMAKE_CURRENT_LIST_DIR}/EdgecModel.cmake)
set(Edgec_FOUND TRUE)
