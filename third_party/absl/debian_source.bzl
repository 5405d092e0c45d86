"""@com_google_absl from the Debian source package that ./bazelw unpacks.

third_party/absl/fetch_debian_source.sh puts the tree in the user's cache;
this rule links it in as a repository with Abseil's own Bazel BUILD files.
Offline: it reads the cache and never fetches.
"""

def _cache_dir(rctx):
    env = rctx.os.environ
    if env.get("GPUALLOC_CACHE"):
        return env["GPUALLOC_CACHE"]
    if env.get("XDG_CACHE_HOME"):
        return env["XDG_CACHE_HOME"] + "/gpualloc"
    return env.get("HOME", "") + "/.cache/gpualloc"

def _debian_source_impl(rctx):
    root = rctx.path(_cache_dir(rctx) + "/sources/" + rctx.attr.directory)
    if not rctx.path(str(root) + "/.complete").exists:
        fail(("%s is not unpacked at %s: run the build through ./bazelw, which fetches it " +
              "(third_party/absl/fetch_debian_source.sh)") % (rctx.attr.directory, root))
    for child in root.readdir():
        rctx.symlink(child, child.basename)

debian_source_repository = repository_rule(
    implementation = _debian_source_impl,
    attrs = {"directory": attr.string(mandatory = True)},
    environ = ["GPUALLOC_CACHE", "XDG_CACHE_HOME", "HOME"],
    local = True,
)
