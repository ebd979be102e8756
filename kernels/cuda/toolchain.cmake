# CUDA toolchain for STRATA_CUDA builds, included from the root CMakeLists.txt (root scope, so
# every directory sees the CUDA language and the imported targets).
#
# Architectures default to 80;90 (A100, H100): "native" cannot work on a build machine without a
# GPU. The shared CUDA runtime keeps binaries small and lets them start without a GPU; nothing
# links the driver API (libcuda).
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR CMAKE_CUDA_ARCHITECTURES STREQUAL "")
  set(CMAKE_CUDA_ARCHITECTURES "80;90")
endif()
set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)
if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
  set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
endif()
if(CCACHE_PROGRAM AND NOT CMAKE_CUDA_COMPILER_LAUNCHER)
  set(CMAKE_CUDA_COMPILER_LAUNCHER ${CCACHE_PROGRAM})
endif()
enable_language(CUDA)
# CMake 3.25 does not know nvcc's C++20 flag; the .cu files are C++17.
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
set(CMAKE_CUDA_FLAGS_RELWITHDEBINFO "-O2 -DNDEBUG")
find_package(CUDAToolkit REQUIRED)

# NCCL: the header at build time; the library is opened at run time (nccl_link.cc), so binaries
# start where NCCL is absent and report UNAVAILABLE instead. The path found here is the fallback
# the loader tries after the default search.
find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} ${CUDAToolkit_TARGET_DIR}/include)
find_library(NCCL_LIBRARY NAMES nccl libnccl.so.2 HINTS ${CUDAToolkit_LIBRARY_DIR})
if(NOT NCCL_INCLUDE_DIR)
  message(FATAL_ERROR "STRATA_CUDA: nccl.h not found next to the CUDA toolkit")
endif()
message(STATUS "CUDA ${CUDAToolkit_VERSION}, architectures ${CMAKE_CUDA_ARCHITECTURES}, "
               "NCCL header ${NCCL_INCLUDE_DIR}, library ${NCCL_LIBRARY}")
