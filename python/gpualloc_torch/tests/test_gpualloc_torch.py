"""gpualloc_torch's logic against the torch STUB (tests/stub_torch) and the
real libgpualloc_torch.so on the simulated device (GPUALLOC_BACKEND=sim).
Each case runs in a fresh interpreter: the library reads its configuration
once per process, and enable() may run once per process."""
import os
import subprocess
import sys
import textwrap
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))


def run(code, **env):
    full_env = dict(os.environ, GPUALLOC_BACKEND="sim")
    full_env.update(env)
    full_env["PYTHONPATH"] = os.pathsep.join(
        [os.path.join(HERE, "stub_torch"), os.environ["GPUALLOC_TORCH_PACKAGE"]])
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env,
                          capture_output=True, text=True, timeout=60)
    return proc


class EnableTest(unittest.TestCase):
    def assertRuns(self, code, **env):
        proc = run(code, **env)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        return proc.stdout

    def test_refuses_by_default_when_record_stream_would_be_ignored(self):
        self.assertRuns("""
            import torch, gpualloc_torch
            try:
                gpualloc_torch.enable()
            except gpualloc_torch.GpuallocError as e:
                assert "record_stream would be silently ignored" in str(e), e
                assert "data corruption" in str(e), e
                assert not torch.installed, "installed although it refused"
            else:
                raise SystemExit("enable() did not refuse")
        """)

    def test_patch_wires_record_stream_to_the_allocator(self):
        self.assertRuns("""
            import ctypes, torch, gpualloc_torch
            wired = gpualloc_torch.enable(record_stream="patch")
            assert wired["record_stream"] == "patched", wired
            assert len(torch.installed) == 1
            lib = gpualloc_torch._state["lib"]
            lib.gpualloc_torch_malloc.restype = ctypes.c_void_p
            lib.gpualloc_torch_malloc.argtypes = [ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
            ptr = lib.gpualloc_torch_malloc(1 << 20, 0, None)
            assert ptr, "malloc failed"
            class Stream: cuda_stream = 0x1234
            before = lib.gpualloc_torch_error_count()
            torch.Tensor(ptr).record_stream(Stream())
            assert len(torch.record_stream_calls) == 1, "the original was not called"
            assert lib.gpualloc_torch_error_count() == before, gpualloc_torch._last_error(lib)
            torch.Tensor(ptr + (1 << 30)).record_stream(Stream())  # not ours: an error, counted
            assert lib.gpualloc_torch_error_count() == before + 1
            assert "not a live allocation" in gpualloc_torch._last_error(lib)
            stats = gpualloc_torch.memory_stats(0)
            assert stats["allocated_bytes.current"] >= 1 << 20, stats
            lib.gpualloc_torch_free.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
            lib.gpualloc_torch_free(ptr, 1 << 20, 0, None)
            gpualloc_torch.empty_cache()
            assert gpualloc_torch.memory_stats(0)["reserved_bytes.current"] == 0
        """)

    def test_setters_are_used_where_pytorch_exposes_them(self):
        self.assertRuns("""
            import ctypes, torch, gpualloc_torch
            torch.stub_config["setters"] = True
            wired = gpualloc_torch.enable()
            assert wired == {"record_stream": "setter", "empty_cache": True,
                             "memory_fraction": True}, wired
            hooks = torch.installed[0]._allocator.hooks
            lib = gpualloc_torch._state["lib"]
            assert hooks["record_stream"] == ctypes.cast(lib.gpualloc_torch_record_stream, ctypes.c_void_p).value
            assert hooks["reset"] == ctypes.cast(lib.gpualloc_torch_reset, ctypes.c_void_p).value
        """)

    def test_memory_fraction_caps_the_device_and_rejects_bad_values(self):
        self.assertRuns("""
            import gpualloc_torch
            gpualloc_torch.enable(record_stream="ignore")
            gpualloc_torch.set_memory_fraction(0.5, 0)
            limit = gpualloc_torch.memory_stats(0)["reserved_limit"]
            assert limit > 0, limit
            for bad in (0, 1.5, -1):
                try:
                    gpualloc_torch.set_memory_fraction(bad, 0)
                except gpualloc_torch.GpuallocError as e:
                    assert "not in (0, 1]" in str(e), e
                else:
                    raise SystemExit(f"fraction {bad} accepted")
        """)

    def test_bad_conf_is_an_error_at_enable_naming_the_pair(self):
        self.assertRuns("""
            import torch, gpualloc_torch
            try:
                gpualloc_torch.enable("expandable_segments:True,limit_mb:lots", record_stream="ignore")
            except gpualloc_torch.GpuallocError as e:
                assert "limit_mb:lots" in str(e), e
                assert not torch.installed
            else:
                raise SystemExit("a bad GPUALLOC_CONF was accepted")
        """)

    def test_unknown_backend_is_an_error_not_a_fallback(self):
        self.assertRuns("""
            import gpualloc_torch
            try:
                gpualloc_torch.enable(record_stream="ignore")
            except gpualloc_torch.GpuallocError as e:
                assert "GPUALLOC_BACKEND='rocm7'" in str(e), e
            else:
                raise SystemExit("an unknown backend was accepted")
        """, GPUALLOC_BACKEND="rocm7")

    def test_no_library_is_a_clear_error(self):
        self.assertRuns("""
            import gpualloc_torch
            try:
                gpualloc_torch.enable(library="/nonexistent/libgpualloc_torch.so")
            except gpualloc_torch.GpuallocError as e:
                assert "/nonexistent/libgpualloc_torch.so: no such file" in str(e), e
            else:
                raise SystemExit("no error")
        """)


if __name__ == "__main__":
    unittest.main()
