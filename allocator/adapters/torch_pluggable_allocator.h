/* A C ABI matching PyTorch's pluggable-allocator hook, so
 * torch.cuda.memory.CUDAPluggableAllocator can load gpualloc's caching
 * allocator from libgpualloc_torch.so:
 *
 *   alloc = torch.cuda.memory.CUDAPluggableAllocator(
 *       "libgpualloc_torch.so", "gpualloc_torch_malloc", "gpualloc_torch_free")
 *   torch.cuda.memory.change_current_allocator(alloc)
 *
 * The runtime is chosen by the GPUALLOC_BACKEND environment variable (cuda,
 * the default; hip; sim for tests) and the allocator's settings by
 * GPUALLOC_CONF (see alloc_conf.h), both read once at first use; a bad value
 * of either is reported then (stderr, gpualloc_torch_last_error) and every
 * call fails, never a silent fallback to defaults. Each device gets
 * one caching allocator. Errors cannot cross a C ABI as Status: a failed
 * allocation returns NULL, a failed free is reported on stderr; both are
 * counted and the last message is kept (gpualloc_torch_last_error).
 * `stream` is the runtime's stream handle (NULL: the default stream); with
 * GPUALLOC_BACKEND=sim, each distinct handle is given a sim stream of its own
 * on first sight, since the sim never created the caller's streams.
 * Thread-safe. */
#ifndef GPUALLOC_ALLOCATOR_ADAPTERS_TORCH_PLUGGABLE_ALLOCATOR_H_
#define GPUALLOC_ALLOCATOR_ADAPTERS_TORCH_PLUGGABLE_ALLOCATOR_H_

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

void* gpualloc_torch_malloc(size_t size, int device, void* stream);
void gpualloc_torch_free(void* ptr, size_t size, int device, void* stream);
/* Returns every cached segment of every device to the runtime. 0 on success. */
int gpualloc_torch_empty_cache(void);
/* Bytes allocated / reserved on `device`, -1 if it has no allocator yet. */
long long gpualloc_torch_allocated_bytes(int device);
long long gpualloc_torch_reserved_bytes(int device);
/* The hooks PyTorch's CUDAPluggableAllocator can take where it exposes
 * their setters (the Python package gpualloc_torch wires them):
 *  - record_stream: `ptr` (a live allocation of ours, any device) is used
 *    on `stream` too; its block is not reused before that work is done.
 *  - reset: empty_cache for the devices in use.
 *  - set_memory_fraction: cap `device`'s reserved bytes at `fraction` of its
 *    memory (0 < fraction <= 1). */
void gpualloc_torch_record_stream(void* ptr, void* stream);
void gpualloc_torch_reset(void);
void gpualloc_torch_set_memory_fraction(double fraction, int device);
/* Writes up to `capacity` counters of `device` into `out`, in this order:
 * allocated current, allocated peak, reserved current, reserved peak, active
 * blocks, segments, OOMs, cache hits, cache misses, cross-stream reuses,
 * reserved limit (0: none). Returns how many counters there are (call with
 * capacity 0 to ask), or -1 when `device` cannot be used. */
int gpualloc_torch_stats(int device, long long* out, int capacity);
/* 1, with the message in `buffer`, when GPUALLOC_BACKEND or GPUALLOC_CONF is
 * bad; 0 otherwise. */
int gpualloc_torch_configuration_error(char* buffer, size_t len);
/* Failed allocations plus failed frees so far. */
long long gpualloc_torch_error_count(void);
/* Copies the last error message (NUL-terminated, truncated to `len`). */
size_t gpualloc_torch_last_error(char* buffer, size_t len);

#ifdef __cplusplus
}
#endif

#endif  /* GPUALLOC_ALLOCATOR_ADAPTERS_TORCH_PLUGGABLE_ALLOCATOR_H_ */
