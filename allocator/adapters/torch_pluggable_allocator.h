/* A C ABI matching PyTorch's pluggable-allocator hook, so
 * torch.cuda.memory.CUDAPluggableAllocator can load gpualloc's caching
 * allocator from libgpualloc_torch.so:
 *
 *   alloc = torch.cuda.memory.CUDAPluggableAllocator(
 *       "libgpualloc_torch.so", "gpualloc_torch_malloc", "gpualloc_torch_free")
 *   torch.cuda.memory.change_current_allocator(alloc)
 *
 * The runtime is chosen by the GPUALLOC_BACKEND environment variable (cuda,
 * the default; hip; sim for tests), read once at first use. Each device gets
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
/* Failed allocations plus failed frees so far. */
long long gpualloc_torch_error_count(void);
/* Copies the last error message (NUL-terminated, truncated to `len`). */
size_t gpualloc_torch_last_error(char* buffer, size_t len);

#ifdef __cplusplus
}
#endif

#endif  /* GPUALLOC_ALLOCATOR_ADAPTERS_TORCH_PLUGGABLE_ALLOCATOR_H_ */
