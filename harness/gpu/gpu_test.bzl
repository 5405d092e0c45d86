"""gpu_test: one `gpu`-tagged cc_test per runtime over the same source.

`gpu_test(name = "x", srcs = [...], deps = [...])` makes `x_cuda` and `x_hip`
(or the runtimes named). Each is built with GPUALLOC_TEST_RUNTIME set to its
runtime, links the main that fails up front when there is no such device,
and carries the execution properties that route it to a GPU worker pool
under --config=remote (see docs/building.md).
"""

GPU_EXEC_PROPERTIES = {
    "cuda": {"gpu": "nvidia"},
    "hip": {"gpu": "amd"},
}

def gpu_test(name, srcs, deps = [], runtimes = ["cuda", "hip"], size = "medium", shard_count = None, **kwargs):
    for runtime in runtimes:
        native.cc_test(
            name = "%s_%s" % (name, runtime),
            srcs = srcs,
            size = size,
            shard_count = shard_count,
            local_defines = ["GPUALLOC_TEST_RUNTIME=\\\"%s\\\"" % runtime],
            tags = ["gpu", runtime],
            exec_properties = GPU_EXEC_PROPERTIES[runtime],
            deps = deps + [
                "//harness/gpu:require_device",
                "//harness/gpu:%s_test_main" % runtime,
            ],
            **kwargs
        )
