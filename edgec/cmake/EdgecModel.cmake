# EdgecModel.cmake: compile ONNX models with edgec as part of a CMake build.
#
#   include(EdgecModel)            # with this folder on CMAKE_MODULE_PATH
#   edgec_add_model(digits
#       MODEL  ${CMAKE_CURRENT_SOURCE_DIR}/digits_cnn.onnx
#       TARGET cortex-m4
#       OPTIONS --quantize int8 --calib calib.npz)   # any other `edgec compile` options
#   target_link_libraries(firmware PRIVATE digits)
#
# `digits` is then an imported static library (lib<prefix>.a) whose include directory holds the
# generated <prefix>.h. <prefix> is the model file's stem as a C identifier (edgec's naming:
# lower case, non-alphanumerics become '_', 'm_' in front of a leading digit), e.g. digits_cnn;
# its name is in the variable <NAME>_EDGEC_PREFIX. `edgec compile` runs as a custom command
# with a Make-format depfile (--depfile), so the model is rebuilt exactly when the model, its
# external data, calibration/evaluation data or config file change, and not otherwise.
#
# Variables: EDGEC_EXECUTABLE (default: `<Python3_EXECUTABLE> -m edgec.cli`, the Python found by
# find_package(Python3), which must have edgec installed);
# after the call, EDGEC_RUNTIME_DIR holds edgec's runtime folder (Cortex-M startup code and
# linker scripts, used by the example firmware).

cmake_minimum_required(VERSION 3.21)  # DEPFILE for the Makefile generators

# The Python that has edgec installed (Python3_EXECUTABLE may be given to choose one).
find_package(Python3 REQUIRED COMPONENTS Interpreter)
if(NOT EDGEC_EXECUTABLE)
  set(EDGEC_EXECUTABLE ${Python3_EXECUTABLE} -m edgec.cli)
endif()

if(NOT EDGEC_RUNTIME_DIR)
  execute_process(
    COMMAND ${Python3_EXECUTABLE} -c "from edgec.targets.tvm.c_emitter import runtime_dir; print(runtime_dir())"
    OUTPUT_VARIABLE EDGEC_RUNTIME_DIR OUTPUT_STRIP_TRAILING_WHITESPACE COMMAND_ERROR_IS_FATAL ANY)
  set(EDGEC_RUNTIME_DIR ${EDGEC_RUNTIME_DIR} CACHE PATH "edgec's runtime folder (startup code, linker scripts)")
endif()

function(edgec_add_model NAME)
  cmake_parse_arguments(PARSE_ARGV 1 ARG "" "MODEL;TARGET" "OPTIONS")
  if(NOT ARG_MODEL OR NOT ARG_TARGET)
    message(FATAL_ERROR "edgec_add_model(${NAME}): MODEL and TARGET are required")
  endif()
  get_filename_component(model ${ARG_MODEL} ABSOLUTE)
  get_filename_component(stem ${model} NAME_WE)
  string(TOLOWER "${stem}" prefix)
  string(REGEX REPLACE "[^0-9a-z_]" "_" prefix "${prefix}")
  string(REGEX REPLACE "^_+|_+$" "" prefix "${prefix}")
  if(prefix MATCHES "^[0-9]")
    set(prefix "m_${prefix}")
  endif()
  # Not "edgec/": a folder of that name in the working directory would shadow the package
  # for `python -m edgec.cli`.
  set(out ${CMAKE_CURRENT_BINARY_DIR}/edgec_models/${NAME})
  set(library ${out}/lib${prefix}.a)
  # The imported target's include folder must exist at configure time; edgec accepts an
  # empty folder as its output and replaces it atomically.
  file(MAKE_DIRECTORY ${out})
  add_custom_command(
    OUTPUT ${out}/manifest.json ${library} ${out}/${prefix}.h
    COMMAND ${EDGEC_EXECUTABLE} compile ${model} --target ${ARG_TARGET} -o ${out}
            --name ${prefix} --depfile ${out}.d --quiet ${ARG_OPTIONS}
    DEPENDS ${model}
    DEPFILE ${out}.d
    COMMENT "edgec: compiling ${stem} for ${ARG_TARGET}"
    VERBATIM)
  add_custom_target(${NAME}_edgec DEPENDS ${out}/manifest.json)
  add_library(${NAME} STATIC IMPORTED GLOBAL)
  set_target_properties(${NAME} PROPERTIES
    IMPORTED_LOCATION ${library}
    INTERFACE_INCLUDE_DIRECTORIES ${out}
    INTERFACE_LINK_LIBRARIES m)
  add_dependencies(${NAME} ${NAME}_edgec)
  set(${NAME}_EDGEC_PREFIX ${prefix} PARENT_SCOPE)
  set(${NAME}_EDGEC_DIR ${out} PARENT_SCOPE)
endfunction()
