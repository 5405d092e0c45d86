"""Finds the CUDA and HIP toolkits on the build machine, offline.

Each rule makes a repository with one cc_library, `:runtime`. When the toolkit
is present it carries the headers, the runtime library and a define
(GPUALLOC_HAVE_CUDA / GPUALLOC_HAVE_HIP) that switches the real backend on.
When it is absent the library is empty, the backend compiles in its "off"
form, and the build says so instead of failing.
"""

_CUDA_ON = """
package(default_visibility = ["//visibility:public"])

cc_import(
    name = "cudart_static",
    static_library = "lib/libcudart_static.a",
)

cc_library(
    name = "runtime",
    hdrs = glob(["include/*.h", "include/*.hpp", "include/crt/**"]),
    includes = ["include"],
    defines = ["GPUALLOC_HAVE_CUDA=1"],
    linkopts = ["-ldl", "-lrt", "-lpthread"],
    deps = [":cudart_static"],
)
"""

_HIP_ON = """
package(default_visibility = ["//visibility:public"])

cc_library(
    name = "runtime",
    hdrs = glob(["include/hip/**"]),
    includes = ["include"],
    defines = ["GPUALLOC_HAVE_HIP=1", "__HIP_PLATFORM_AMD__=1"],
    # Not linked: the backend loads libamdhip64 with dlopen at run time (see
    # allocator/backend/hip/hip_runtime_loader.h), so binaries start on hosts
    # without ROCm.
    linkopts = ["-ldl"],
)
"""

_OFF = """
package(default_visibility = ["//visibility:public"])

# {name} was not found at {where}: the backend is built in its "off" form.
cc_library(name = "runtime")
"""

def _cuda_configure_impl(rctx):
    root = rctx.os.environ.get("CUDA_PATH", "/usr/local/cuda")
    header = rctx.path(root + "/include/cuda_runtime.h")
    lib = rctx.path(root + "/lib64/libcudart_static.a")
    if header.exists and lib.exists:
        rctx.symlink(root + "/include", "include")
        rctx.symlink(lib, "lib/libcudart_static.a")
        rctx.file("BUILD.bazel", _CUDA_ON)
        rctx.file("status.bzl", "CUDA_AVAILABLE = True\n")
    else:
        print("CUDA toolkit not found at %s: the CUDA backend is off." % root)
        rctx.file("BUILD.bazel", _OFF.format(name = "CUDA", where = root))
        rctx.file("status.bzl", "CUDA_AVAILABLE = False\n")

cuda_configure = repository_rule(
    implementation = _cuda_configure_impl,
    environ = ["CUDA_PATH"],
    local = True,
)

def _hip_configure_impl(rctx):
    inc = rctx.os.environ.get("HIP_INCLUDE", "/usr/include")
    libdir = rctx.os.environ.get("HIP_LIBDIR", "/usr/lib/x86_64-linux-gnu")
    if rctx.path(inc + "/hip/hip_runtime_api.h").exists and rctx.path(libdir + "/libamdhip64.so").exists:
        rctx.symlink(inc + "/hip", "include/hip")
        rctx.file("BUILD.bazel", _HIP_ON)
        rctx.file("status.bzl", "HIP_AVAILABLE = True\n")
    else:
        print("HIP runtime not found at %s: the HIP backend is off." % inc)
        rctx.file("BUILD.bazel", _OFF.format(name = "HIP", where = inc))
        rctx.file("status.bzl", "HIP_AVAILABLE = False\n")

hip_configure = repository_rule(
    implementation = _hip_configure_impl,
    environ = ["HIP_INCLUDE", "HIP_LIBDIR"],
    local = True,
)
