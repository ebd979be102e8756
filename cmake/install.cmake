# What `cmake --install` puts under the prefix, in two components:
#   client   the SDK: lib/libstrata_client.so, include/strata/client.h, the CMake package
#            (find_package(strata) gives strata::client) and lib/pkgconfig/strata-client.pc;
#   runtime  the programs: bin/strata and bin/strata-linkem.
include(CMakePackageConfigHelpers)

set(STRATA_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/strata)
install(TARGETS strata_client EXPORT strataTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT client
  PUBLIC_HEADER DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/strata COMPONENT client)
install(EXPORT strataTargets NAMESPACE strata:: DESTINATION ${STRATA_CMAKE_DIR} COMPONENT client)
configure_package_config_file(cmake/strataConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/strataConfig.cmake INSTALL_DESTINATION ${STRATA_CMAKE_DIR})
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/strataConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/strataConfig.cmake
  ${CMAKE_CURRENT_BINARY_DIR}/strataConfigVersion.cmake
  DESTINATION ${STRATA_CMAKE_DIR} COMPONENT client)
# The .pc file finds the prefix from where it lies, so the tree can be installed anywhere.
file(RELATIVE_PATH STRATA_PC_TO_PREFIX /prefix/${CMAKE_INSTALL_LIBDIR}/pkgconfig /prefix)
configure_file(cmake/strata-client.pc.in ${CMAKE_CURRENT_BINARY_DIR}/strata-client.pc @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/strata-client.pc
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig COMPONENT client)

install(TARGETS strata strata-linkem RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT runtime)
