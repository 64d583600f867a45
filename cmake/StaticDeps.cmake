# -DSTATIC_DEPS=ON: link the Debian packages' static archives (gRPC, protobuf,
# abseil, c-ares, re2, OpenSSL, zlib, liburing) instead of their shared
# objects. Why: under the guest's TCG the dynamic loader's work on ~66 shared
# objects and ~40 000 relocations is most of a process start (bench/README.md,
# "Recovery after kill -9", sessions 8 and 11), and a restarted plugin's start
# is on the path of every volume's recovery. libc, libstdc++, libgcc, glog and
# gflags (see below) and the libraries Debian ships only as shared objects
# (prometheus-cpp, civetweb) stay shared.
#
# How: every imported target found so far that names lib<name>.so* (its
# location) or lib<name>.so, <name> or -l<name> (an INTERFACE target's link
# items, as pkg-config's targets and gRPC's Findre2 make them) is pointed at
# lib<name>.a where the package ships one (GoogleTest and Google Benchmark
# too, for the tests of this tree); the packages' CMake files already list
# each target's dependencies, so the archives come in the order the linker
# needs.

# glog and gflags stay shared: glog's archive needs libunwind, whose archive
# is not position-independent (a PIE cannot take it), and glog's shared
# object brings its own gflags (two copies of gflags' registry must not be).
set(_static_keep_shared "stdc\\+\\+|gcc_s|c|m|dl|rt|pthread|atomic|prometheus-cpp-.*|civetweb.*|glog|gflags.*")

# The archive for one link item, or the item itself.
function(_static_deps_archive item out)
  set(${out} "${item}" PARENT_SCOPE)
  if(item MATCHES "^(.*)/lib([^/]+)\\.so(\\.[0-9.]+)?$")
    set(_dir ${CMAKE_MATCH_1})
    set(_name ${CMAKE_MATCH_2})
  elseif(item MATCHES "^(-l)?([A-Za-z0-9_+]+)$" AND NOT TARGET ${item})
    set(_name ${CMAKE_MATCH_2})
    find_library(_static_deps_${_name}_a lib${_name}.a)
    if(NOT _static_deps_${_name}_a)
      return()
    endif()
    get_filename_component(_dir ${_static_deps_${_name}_a} DIRECTORY)
  else()
    return()
  endif()
  if(NOT _name MATCHES "^(${_static_keep_shared})$" AND EXISTS ${_dir}/lib${_name}.a)
    set(${out} ${_dir}/lib${_name}.a PARENT_SCOPE)
    set_property(GLOBAL APPEND PROPERTY UBLK_CSI_STATIC_ARCHIVES ${_name})
  endif()
endfunction()

function(_static_deps_rewrite target)
  get_target_property(_configs ${target} IMPORTED_CONFIGURATIONS)
  set(_props IMPORTED_LOCATION)
  foreach(_c ${_configs})
    if(_c)
      list(APPEND _props IMPORTED_LOCATION_${_c})
    endif()
  endforeach()
  get_target_property(_type ${target} TYPE)
  if(NOT _type STREQUAL "INTERFACE_LIBRARY")
    foreach(_p ${_props})
      get_target_property(_loc ${target} ${_p})
      if(_loc)
        _static_deps_archive(${_loc} _a)
        set_target_properties(${target} PROPERTIES ${_p} ${_a})
      endif()
    endforeach()
  endif()
  get_target_property(_deps ${target} INTERFACE_LINK_LIBRARIES)
  if(_deps)
    set(_new "")
    foreach(_d ${_deps})
      _static_deps_archive(${_d} _a)
      list(APPEND _new ${_a})
    endforeach()
    set_target_properties(${target} PROPERTIES INTERFACE_LINK_LIBRARIES "${_new}")
  endif()
endfunction()

get_property(_imported DIRECTORY PROPERTY IMPORTED_TARGETS)
foreach(_t ${_imported})
  _static_deps_rewrite(${_t})
endforeach()
get_property(_static GLOBAL PROPERTY UBLK_CSI_STATIC_ARCHIVES)
list(REMOVE_DUPLICATES _static)
list(LENGTH _static _n)
message(STATUS "STATIC_DEPS: ${_n} libraries linked from their static archives")
