"""gpualloc_fuzz_test: a libFuzzer target laid out the way the fuzzing
ecosystem expects (modelled on rules_fuzzing's cc_fuzz_test).

For a target NAME with sources defining LLVMFuzzerTestOneInput it makes:
  NAME_lib  the target's code;
  NAME      a test (tag fuzz-test) that replays corpus/NAME/ and every saved
            crash in crashes/NAME/ in a plain `bazel test`, so a crash once
            found stays a regression test;
  NAME_run  the fuzzer: libFuzzer under --config=fuzz, else the replayer.
"""

def gpualloc_fuzz_test(name, srcs, deps = [], dict = None, **kwargs):
    native.cc_library(
        name = name + "_lib",
        testonly = True,
        srcs = srcs,
        deps = deps,
        alwayslink = True,
    )
    data = native.glob(["corpus/%s/**" % name]) + native.glob(["crashes/%s/**" % name], allow_empty = True)
    if dict:
        data.append(dict)
    native.cc_test(
        name = name,
        size = kwargs.pop("size", "small"),
        data = data,
        args = ["fuzz/corpus/" + name, "fuzz/crashes/" + name],
        tags = ["fuzz-test"] + kwargs.pop("tags", []),
        deps = [
            ":" + name + "_lib",
            "//fuzz:replay_main",
        ],
        **kwargs
    )
    native.cc_binary(
        name = name + "_run",
        testonly = True,
        data = data,
        linkopts = select({
            "//fuzz:fuzzing": ["-fsanitize=fuzzer"],
            "//conditions:default": [],
        }),
        deps = [":" + name + "_lib"] + select({
            "//fuzz:fuzzing": [],
            "//conditions:default": ["//fuzz:replay_main"],
        }),
    )
