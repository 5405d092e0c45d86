"""STUB of torch.cuda.memory: CUDAPluggableAllocator and change_current_allocator."""
import ctypes

import torch


class _Inner:
    """Where a PyTorch that has them exposes the hook setters."""

    def __init__(self):
        self.hooks = {}

    def set_record_stream_fn(self, address):
        self.hooks["record_stream"] = address

    def set_reset_fn(self, address):
        self.hooks["reset"] = address

    def set_memory_fraction_fn(self, address):
        self.hooks["memory_fraction"] = address


class CUDAPluggableAllocator:
    def __init__(self, path, alloc_fn_name, free_fn_name):
        lib = ctypes.CDLL(path)
        self.alloc = getattr(lib, alloc_fn_name)  # a missing symbol raises, as in PyTorch
        self.free = getattr(lib, free_fn_name)
        self.path = path
        if torch.stub_config["setters"]:
            self._allocator = _Inner()
        else:
            self._allocator = object()


def change_current_allocator(allocator):
    torch.installed.append(allocator)
