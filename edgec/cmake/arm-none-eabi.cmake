# CMake toolchain file for bare-metal Arm (Debian: gcc-arm-none-eabi, libnewlib-arm-none-eabi).
# Pick the core with -DEDGEC_CPU_FLAGS="-mcpu=cortex-m4 -mthumb -mfpu=fpv4-sp-d16 -mfloat-abi=hard";
# these must match the edgec target the models are compiled for.
set(CMAKE_SYSTEM_NAME Generic)
set(CMAKE_SYSTEM_PROCESSOR arm)
set(CMAKE_C_COMPILER arm-none-eabi-gcc)
set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)
if(NOT EDGEC_CPU_FLAGS)
  set(EDGEC_CPU_FLAGS "-mcpu=cortex-m4 -mthumb -mfpu=fpv4-sp-d16 -mfloat-abi=hard")
endif()
set(CMAKE_C_FLAGS_INIT "${EDGEC_CPU_FLAGS}")
set(CMAKE_EXE_LINKER_FLAGS_INIT "${EDGEC_CPU_FLAGS}")
