"""Use gpualloc's stream-aware caching allocator as PyTorch's CUDA allocator.

    import gpualloc_torch
    gpualloc_torch.enable()          # before the first CUDA tensor

`enable` loads libgpualloc_torch.so (the `library` argument, else the
GPUALLOC_TORCH_LIBRARY environment variable), hands its malloc/free to
torch.cuda.memory.CUDAPluggableAllocator, and wires record-stream,
empty-cache and memory-fraction where the installed PyTorch exposes the
setters. Where it does not, Tensor.record_stream would be silently ignored:
a tensor freed while a side stream still reads it could be handed out again
and overwritten. So `enable` refuses by default, and says so. The caller can
opt in with `record_stream="patch"` (this package wraps Tensor.record_stream
to tell the allocator directly) or `record_stream="ignore"` (the caller
promises never to call it).

`conf` is GPUALLOC_CONF (e.g. "expandable_segments:True,limit_mb:40960");
a bad value is an error here, at enable time.
"""

import ctypes
import os

__all__ = ["enable", "empty_cache", "set_memory_fraction", "memory_stats", "GpuallocError"]

_STAT_NAMES = (
    "allocated_bytes.current", "allocated_bytes.peak", "reserved_bytes.current",
    "reserved_bytes.peak", "active_blocks.current", "segments.current", "num_ooms",
    "cache_hits", "cache_misses", "cross_stream_reuses", "reserved_limit",
)

_state = {"lib": None, "path": None, "record_stream": None}


class GpuallocError(RuntimeError):
    """enable() could not install the allocator, or a call into it failed."""


def _torch():
    import torch  # imported late: the package's logic is testable without it
    return torch


def _load(library):
    path = library or os.environ.get("GPUALLOC_TORCH_LIBRARY")
    if not path:
        raise GpuallocError(
            "gpualloc_torch: no library: pass library= or set GPUALLOC_TORCH_LIBRARY "
            "to the path of libgpualloc_torch.so")
    if not os.path.isfile(path):
        raise GpuallocError(f"gpualloc_torch: {path}: no such file")
    lib = ctypes.CDLL(os.path.abspath(path))
    lib.gpualloc_torch_record_stream.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.gpualloc_torch_set_memory_fraction.argtypes = [ctypes.c_double, ctypes.c_int]
    lib.gpualloc_torch_stats.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_longlong), ctypes.c_int]
    lib.gpualloc_torch_stats.restype = ctypes.c_int
    lib.gpualloc_torch_empty_cache.restype = ctypes.c_int
    lib.gpualloc_torch_configuration_error.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    lib.gpualloc_torch_configuration_error.restype = ctypes.c_int
    lib.gpualloc_torch_last_error.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    lib.gpualloc_torch_last_error.restype = ctypes.c_size_t
    lib.gpualloc_torch_error_count.restype = ctypes.c_longlong
    return os.path.abspath(path), lib


def _configuration_error(lib):
    buf = ctypes.create_string_buffer(1024)
    if lib.gpualloc_torch_configuration_error(buf, len(buf)):
        return buf.value.decode(errors="replace")
    return None


def _setter(allocator, *names):
    """The first setter of `names` the pluggable allocator object exposes."""
    inner = getattr(allocator, "_allocator", allocator)
    for name in names:
        fn = getattr(inner, name, None)
        if callable(fn):
            return fn
    return None


def enable(conf=None, library=None, record_stream="auto"):
    """Installs gpualloc as PyTorch's CUDA allocator; call before CUDA is used.

    conf: GPUALLOC_CONF settings (None keeps the environment's, if any).
    library: path of libgpualloc_torch.so (default: $GPUALLOC_TORCH_LIBRARY).
    record_stream: "auto" (wire PyTorch's setter; refuse if there is none),
      "patch" (wrap Tensor.record_stream when there is no setter) or
      "ignore" (accept that record_stream is ignored).
    Returns a dict saying what was wired.
    """
    if record_stream not in ("auto", "patch", "ignore"):
        raise ValueError(f"record_stream={record_stream!r}: expected 'auto', 'patch' or 'ignore'")
    if _state["lib"] is not None:
        raise GpuallocError("gpualloc_torch.enable() was already called in this process")
    if conf is not None:
        os.environ["GPUALLOC_CONF"] = conf
    path, lib = _load(library)
    error = _configuration_error(lib)  # GPUALLOC_CONF / GPUALLOC_BACKEND, read now
    if error:
        raise GpuallocError(f"gpualloc_torch: {error}")
    torch = _torch()
    memory = torch.cuda.memory
    allocator = memory.CUDAPluggableAllocator(path, "gpualloc_torch_malloc", "gpualloc_torch_free")
    wired = {"record_stream": None, "empty_cache": False, "memory_fraction": False}
    set_record = _setter(allocator, "set_record_stream_fn", "_set_record_stream_fn")
    if set_record is not None:
        set_record(ctypes.cast(lib.gpualloc_torch_record_stream, ctypes.c_void_p).value)
        wired["record_stream"] = "setter"
    elif record_stream == "patch":
        _patch_record_stream(torch, lib)
        wired["record_stream"] = "patched"
    elif record_stream == "ignore":
        wired["record_stream"] = "ignored"
    else:
        raise GpuallocError(
            "gpualloc_torch: this PyTorch's CUDAPluggableAllocator has no record-stream setter, "
            "so Tensor.record_stream would be silently ignored: a tensor freed while a side "
            "stream still reads it could be reused and overwritten (data corruption for code "
            "that uses side streams). Pass record_stream='patch' to let gpualloc_torch wrap "
            "Tensor.record_stream, or record_stream='ignore' if no code calls it.")
    set_reset = _setter(allocator, "set_reset_fn", "_set_reset_fn")
    if set_reset is not None:
        set_reset(ctypes.cast(lib.gpualloc_torch_reset, ctypes.c_void_p).value)
        wired["empty_cache"] = True
    set_fraction = _setter(allocator, "set_memory_fraction_fn", "_set_memory_fraction_fn")
    if set_fraction is not None:
        set_fraction(ctypes.cast(lib.gpualloc_torch_set_memory_fraction, ctypes.c_void_p).value)
        wired["memory_fraction"] = True
    memory.change_current_allocator(allocator)
    _state.update(lib=lib, path=path, record_stream=wired["record_stream"], allocator=allocator)
    return wired


def _patch_record_stream(torch, lib):
    original = torch.Tensor.record_stream

    def record_stream(tensor, stream):
        original(tensor, stream)
        if tensor.is_cuda:
            base = tensor.untyped_storage().data_ptr()
            lib.gpualloc_torch_record_stream(ctypes.c_void_p(base), ctypes.c_void_p(stream.cuda_stream))

    record_stream.__doc__ = original.__doc__
    torch.Tensor.record_stream = record_stream


def _lib():
    if _state["lib"] is None:
        raise GpuallocError("gpualloc_torch.enable() has not been called")
    return _state["lib"]


def _last_error(lib):
    buf = ctypes.create_string_buffer(1024)
    lib.gpualloc_torch_last_error(buf, len(buf))
    return buf.value.decode(errors="replace")


def empty_cache():
    """Returns every cached block of the devices in use to the driver."""
    lib = _lib()
    if lib.gpualloc_torch_empty_cache() != 0:
        raise GpuallocError(f"gpualloc_torch.empty_cache: {_last_error(lib)}")


def set_memory_fraction(fraction, device=0):
    """Caps `device`'s reserved memory at `fraction` (0 < fraction <= 1) of it."""
    lib = _lib()
    before = lib.gpualloc_torch_error_count()
    lib.gpualloc_torch_set_memory_fraction(float(fraction), int(device))
    if lib.gpualloc_torch_error_count() != before:
        raise GpuallocError(f"gpualloc_torch.set_memory_fraction: {_last_error(lib)}")


def memory_stats(device=0):
    """The allocator's counters for `device`, as a dict (PyTorch's names where they exist)."""
    lib = _lib()
    n = lib.gpualloc_torch_stats(int(device), None, 0)
    if n < 0:
        raise GpuallocError(f"gpualloc_torch.memory_stats: {_last_error(lib)}")
    values = (ctypes.c_longlong * n)()
    lib.gpualloc_torch_stats(int(device), values, n)
    return dict(zip(_STAT_NAMES, list(values)))
