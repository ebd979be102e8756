# Include boundaries.
#
# Headers are included by their path from the source root ("model/llama.h"). Each target puts the
# root on its own include path and passes it on only to what links it (no global include
# directory), and strata_layer() records which folder the target owns. strata_write_layers()
# writes, for every such target, its folders, its sources and what it links to
# BUILD/layers.txt; the `layering` test (scripts/check_layers.py) fails when a file includes a
# header from a folder whose target its own does not link, directly or through others.

set_property(GLOBAL PROPERTY STRATA_LAYERED_TARGETS "")

# strata_layer(TARGET [FOLDERS prefix...]): `target` owns the headers under each prefix (default:
# the current source folder, relative to the root) and includes from the source root.
function(strata_layer target)
  cmake_parse_arguments(L "" "" "FOLDERS" ${ARGN})
  if(NOT L_FOLDERS)
    file(RELATIVE_PATH L_FOLDERS ${PROJECT_SOURCE_DIR} ${CMAKE_CURRENT_SOURCE_DIR})
  endif()
  get_target_property(type ${target} TYPE)
  if(type STREQUAL "EXECUTABLE")
    target_include_directories(${target} PRIVATE ${PROJECT_SOURCE_DIR})
  elseif(type STREQUAL "INTERFACE_LIBRARY")
    target_include_directories(${target} INTERFACE $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}>)
  else()
    target_include_directories(${target} PUBLIC $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}>)
  endif()
  set_property(TARGET ${target} PROPERTY STRATA_FOLDERS ${L_FOLDERS})
  set_property(GLOBAL APPEND PROPERTY STRATA_LAYERED_TARGETS ${target})
endfunction()

# One line per target: name|folders|source dir|sources|linked libraries (lists joined by ",").
function(strata_write_layers)
  get_property(targets GLOBAL PROPERTY STRATA_LAYERED_TARGETS)
  set(lines "")
  foreach(t ${targets})
    get_target_property(folders ${t} STRATA_FOLDERS)
    get_target_property(dir ${t} SOURCE_DIR)
    get_target_property(sources ${t} SOURCES)
    get_target_property(links ${t} LINK_LIBRARIES)
    get_target_property(interface_links ${t} INTERFACE_LINK_LIBRARIES)
    foreach(v sources links interface_links)
      if(NOT ${v})
        set(${v} "")
      endif()
    endforeach()
    list(APPEND links ${interface_links})
    string(REPLACE ";" "," folders "${folders}")
    string(REPLACE ";" "," sources "${sources}")
    string(REPLACE ";" "," links "${links}")
    string(APPEND lines "${t}|${folders}|${dir}|${sources}|${links}\n")
  endforeach()
  file(WRITE ${CMAKE_BINARY_DIR}/layers.txt "${lines}")
endfunction()
