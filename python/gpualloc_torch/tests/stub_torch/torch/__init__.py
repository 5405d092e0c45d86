"""A STUB of the few torch calls gpualloc_torch makes, for testing the
package's logic where PyTorch is not installed. It is not PyTorch: the real
check is python/check/torch_gpu_check.py in the GPU bundle, on a GPU.

Tests configure it through `stub_config` before calling enable()."""
from . import cuda  # noqa: F401

stub_config = {"setters": False}
installed = []          # allocators passed to change_current_allocator
record_stream_calls = []  # (tensor, stream) seen by the original record_stream


class Tensor:
    """Only what gpualloc_torch touches: is_cuda, untyped_storage().data_ptr()."""

    def __init__(self, data_ptr, is_cuda=True):
        self._ptr = data_ptr
        self.is_cuda = is_cuda

    def untyped_storage(self):
        ptr = self._ptr

        class _Storage:
            def data_ptr(self):
                return ptr
        return _Storage()

    def record_stream(self, stream):
        record_stream_calls.append((self, stream))
