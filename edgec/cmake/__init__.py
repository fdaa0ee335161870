"""Package data: the CMake module (``EdgecModel.cmake``, found by ``find_package(Edgec)`` through
``EdgecConfig.cmake``) and the arm-none-eabi toolchain file; ``edgec cmake-dir`` prints this folder."""
