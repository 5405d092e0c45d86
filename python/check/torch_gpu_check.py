#!/usr/bin/env python3
"""The PyTorch check of the GPU bundle: a small transformer trained for a few
dozen steps, with varying sequence lengths, under three allocators, each in a
process of its own (an allocator is chosen before CUDA starts):

  native           PyTorch's caching allocator
  cudaMallocAsync  PyTorch's cudaMallocAsync backend
  gpualloc         ours, through gpualloc_torch.enable()

It reports each one's losses (gpualloc's and cudaMallocAsync's must match
native's within bf16 tolerance), mean step time and peak device memory, and
runs a record_stream hazard check under each: a tensor read on a side stream
after record_stream and del must not be overwritten by the next allocation.
A fourth process, the negative control, runs ours with record_stream not
wired: there the check should see corruption, showing that it can.

Usage: torch_gpu_check.py [--report FILE] [--steps N]
Needs torch with CUDA, gpualloc_torch importable, GPUALLOC_TORCH_LIBRARY set.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ALLOCATORS = ("native", "cudaMallocAsync", "gpualloc")
# The negative control: ours with record_stream deliberately not wired. The
# hazard check must see corrupted reads here, or it proves nothing.
CONTROL = "gpualloc_no_record_stream"
LOSS_RTOL = 2e-2  # bf16 has 8 bits of mantissa; losses agree to about this


def run_one(allocator, steps):
    if allocator == "cudaMallocAsync":
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "backend:cudaMallocAsync"
    import torch
    if allocator == "gpualloc":
        import gpualloc_torch
        wired = gpualloc_torch.enable(os.environ.get("GPUALLOC_CONF", "cross_stream:follow"),
                                      record_stream="patch")
    elif allocator == CONTROL:
        # Only malloc and free, as a bare CUDAPluggableAllocator is: PyTorch
        # then ignores record_stream.
        alloc = torch.cuda.memory.CUDAPluggableAllocator(
            os.environ["GPUALLOC_TORCH_LIBRARY"], "gpualloc_torch_malloc", "gpualloc_torch_free")
        torch.cuda.memory.change_current_allocator(alloc)
        wired = {"record_stream": None}
    else:
        wired = None
    torch.manual_seed(0)
    dev = torch.device("cuda")
    total = torch.cuda.mem_get_info()[1]
    low_free = [torch.cuda.mem_get_info()[0]]

    model = torch.nn.Transformer(d_model=512, nhead=8, num_encoder_layers=4, num_decoder_layers=2,
                                 dim_feedforward=2048, batch_first=True).to(dev, torch.bfloat16)
    head = torch.nn.Linear(512, 1000).to(dev, torch.bfloat16)
    embed = torch.nn.Embedding(1000, 512).to(dev, torch.bfloat16)
    params = list(model.parameters()) + list(head.parameters()) + list(embed.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)
    gen = torch.Generator(device="cpu").manual_seed(1)
    losses, times = [], []
    for step in range(steps):
        seq = [64, 384, 128, 512, 256, 96][step % 6]  # varying lengths: blocks of many sizes
        src = torch.randint(0, 1000, (16, seq), generator=gen).to(dev)
        tgt = torch.randint(0, 1000, (16, seq // 2), generator=gen).to(dev)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model(embed(src), embed(tgt))
        loss = torch.nn.functional.cross_entropy(head(out).float().flatten(0, 1), tgt.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append(float(loss))
        low_free.append(torch.cuda.mem_get_info()[0])

    hazard = record_stream_hazard(torch)
    stats = None
    if allocator == "gpualloc":
        import gpualloc_torch
        stats = gpualloc_torch.memory_stats(0)
        gpualloc_torch.empty_cache()
    return {
        "allocator": allocator,
        "losses": losses,
        "mean_step_ms": 1000 * sum(times[2:]) / max(1, len(times) - 2),
        "peak_device_mib": (total - min(low_free)) / 2**20,
        "record_stream_hazard": hazard,
        "wired": wired,
        "gpualloc_stats": stats,
    }


def record_stream_hazard(torch):
    """A side stream reads x after slow work; x is recorded on it and deleted;
    the next same-sized allocation on the main stream is overwritten at once.
    If the allocator handed x's memory out before the side stream was done,
    the read sees the new values."""
    n = 1 << 24
    side = torch.cuda.Stream()
    a = torch.randn(4096, 4096, device="cuda")
    errors = 0
    for trial in range(5):
        x = torch.full((n,), 1.0, device="cuda")
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(20):  # keep the side stream busy well past the del
                a = a @ a
                a = a / a.norm()
            seen = x.sum()
        x.record_stream(side)
        del x
        y = torch.full((n,), 2.0, device="cuda")  # may reuse x's block: only after side's read
        side.synchronize()
        if float(seen) != float(n):
            errors += 1
        del y
    torch.cuda.synchronize()
    return {"trials": 5, "corrupted_reads": errors}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--report", default="torch_check.json")
    parser.add_argument("--steps", type=int, default=36)
    parser.add_argument("--one", choices=ALLOCATORS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.steps)))
        return 0
    results, problems = {}, []
    for allocator in ALLOCATORS + (CONTROL,):
        proc = subprocess.run([sys.executable, __file__, "--one", allocator, "--steps", str(args.steps)],
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            problems.append(f"{allocator}: exit {proc.returncode}: {proc.stderr.strip()[-800:]}")
            continue
        results[allocator] = json.loads(proc.stdout.strip().splitlines()[-1])
    native = results.get("native")
    control = results.pop(CONTROL, None)
    if control is not None and control["record_stream_hazard"]["corrupted_reads"] == 0:
        # Informative, not a failure: the race may not show in 5 trials.
        print("check: the negative control (record_stream not wired) saw no corruption: "
              "the hazard check may be too weak on this machine")
    for name, r in results.items():
        if r["record_stream_hazard"]["corrupted_reads"]:
            problems.append(f"{name}: record_stream hazard: {r['record_stream_hazard']}")
        if native and name != "native":
            worst = max(abs(a - b) / max(abs(b), 1e-6) for a, b in zip(r["losses"], native["losses"]))
            r["max_loss_rel_diff_vs_native"] = worst
            if worst > LOSS_RTOL:
                problems.append(f"{name}: losses differ from native by {worst:.3g} (> {LOSS_RTOL})")
    for name in ALLOCATORS:
        r = results.get(name)
        if r:
            print(f"check: {name:16s} step {r['mean_step_ms']:8.2f} ms  peak {r['peak_device_mib']:9.0f} MiB"
                  f"  final loss {r['losses'][-1]:.4f}  record_stream hazard "
                  f"{r['record_stream_hazard']['corrupted_reads']}/{r['record_stream_hazard']['trials']}")
    report = {"results": results, "control": control, "problems": problems,
              "ok": not problems and len(results) == 3}
    with open(args.report, "w") as f:
        json.dump(report, f, indent=1)
    for p in problems:
        print("check: PROBLEM:", p)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
