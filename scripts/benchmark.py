"""Seconds per image and peak memory: plain diffusers vs any asyndm variants (dm, dm_concave, asyndm
by default; the baselines and composed variants with --variants).

Everything runs side by side in one process on one model, the measurements interleaved (one of
each per round) so that drift on a shared machine hits all alike. Reported: the median over the
timed rounds after warm-up, and each variant's ratio to plain diffusers. The last line is one JSON
object for scripts.

    python scripts/benchmark.py --model tiny --device cpu
    python scripts/benchmark.py --model tiny --device cpu --variants dm,asyndm,cfgpp,zsampling,seg,scfg,attend_excite
    python scripts/benchmark.py --model sd21-shaped --device cuda --precision fp16 --batch-size 8
    python scripts/benchmark.py --model sdxl-shaped --device cuda --precision fp16 --batch-size 4
    python scripts/benchmark.py --model sd35m-shaped --device cuda --precision bf16 --batch-size 4 --steps 28
    python scripts/benchmark.py --model flux-shaped --device cuda --precision bf16 --batch-size 1 --steps 28
    python scripts/benchmark.py --model tiny_wan --device cpu --resolution 64 --frames 9 --batch-size 2
    python scripts/benchmark.py --model wan-shaped --device cuda --precision bf16 --batch-size 1 --steps 10 --frames 21
    python scripts/benchmark.py --model tiny --device cpu --compile --variants asyndm

``--compile`` adds each method compiled (``sample.compile=true``, asyndm/compilation.py) beside its
eager run: the model is compiled in place once, so plain diffusers and asyndm go through the very same
compiled regions, and the eager runs switch them off (``torch.compiler.set_stance("force_eager")``).
The first round compiles (``compile_s``: its extra time); ``recompiles`` counts graphs compiled in the
timed rounds after it. On CUDA it then recompiles with ``mode="reduce-overhead"`` (CUDA graphs) and
times the compiled methods again.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import statistics
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from asyndm.compilation import compile_count, eager  # noqa: E402
from asyndm.models import load_backend, resolve_device, resolve_dtype  # noqa: E402
from asyndm.sources import backend_for_pipeline, built_in_names, built_in_source, check_source  # noqa: E402
from asyndm.offline.sd import sd21_shaped_pipeline  # noqa: E402
from asyndm.offline.flux import flux_dev_shaped_pipeline  # noqa: E402
from asyndm.offline.sd3 import sd35_medium_shaped_pipeline  # noqa: E402
from asyndm.offline.sdxl import sdxl_shaped_pipeline  # noqa: E402
from asyndm.offline.wan import wan21_1_3b_shaped_pipeline  # noqa: E402
from asyndm.prompts import PromptSpec  # noqa: E402
from asyndm.sampler import AsyncSampler, SamplingSettings  # noqa: E402
from asyndm.variants import get_variant  # noqa: E402

PROMPT = PromptSpec(0, "a cat eating a sandwich", ["cat", "sandwich"], [0.7, 0.7])
DEFAULT_VARIANTS = "dm,dm_concave,asyndm"


class PeakMemory:
    """Peak memory of one measurement: the CUDA allocator's peak, or sampled RSS on the CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self._stop = threading.Event()
            self.peak = _rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss())


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# Real architectures with random weights, built in memory (no download): name → pipeline builder.
SHAPED = {"sd21-shaped": sd21_shaped_pipeline, "sdxl-shaped": sdxl_shaped_pipeline,
          "sd35m-shaped": sd35_medium_shaped_pipeline, "flux-shaped": flux_dev_shaped_pipeline,
          "wan-shaped": wan21_1_3b_shaped_pipeline}
BUILT_IN = built_in_names()  # tiny, tiny_sdxl, tiny_sd3, tiny_flux (built offline), toy (shipped)


def build_backend(model: str, device, dtype, **options):
    """A built-in model, a ``*-shaped`` architecture in memory, or a folder / hub id. ``options``: the
    family's settings (Wan's ``num_frames``)."""
    if model in SHAPED:
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # built in the run's precision: no fp32 copy (SDXL's is 14 GB)
        try:
            with torch.device(device):  # random weights made where they run: 12 B parameters init fast on a GPU
                pipe = SHAPED[model]()
        finally:
            torch.set_default_dtype(previous)
        return backend_for_pipeline(type(pipe).__name__)(pipe, device, dtype, **options)
    source = built_in_source(model) if model in BUILT_IN else check_source(model)
    return load_backend(source, device, dtype, **options)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny",
                        help=f"{' | '.join(BUILT_IN + tuple(SHAPED))} | a diffusers folder or hub id")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=None, help="image side in pixels (default: the model's)")
    parser.add_argument("--frames", type=int, default=None, help="video models: frames per video (default: the model's)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after one warm-up round")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is stable on shared machines)")
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler tables of dm and asyndm")
    parser.add_argument("--channels-last", action="store_true", help="UNet and VAE in channels_last memory format")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                        help="wall time, or this process's CPU time (one thread, a shared CPU: less disturbed)")
    parser.add_argument("--compile", action="store_true",
                        help="also time every method compiled (sample.compile=true), side by side with eager")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS,
                        help=f"comma-separated variants to time beside plain diffusers (default {DEFAULT_VARIANTS})")
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    for name in variants:
        get_variant(name)  # an unknown name fails before the model is built
    methods = ("vanilla", *variants)

    torch.set_num_threads(args.threads)
    device, dtype = resolve_device(args.device), resolve_dtype(args.precision)
    backend = build_backend(args.model, device, dtype, **({"num_frames": args.frames} if args.frames else {}))
    if args.channels_last:  # shared modules: every method runs in this format
        for name in ("unet", "transformer", "vae"):
            module = getattr(backend.pipe, name, None)
            if module is not None:
                module.to(memory_format=torch.channels_last)
    height, width = (args.resolution, args.resolution) if args.resolution else backend.default_size
    frames = f" frames={backend.num_frames}" if hasattr(backend, "num_frames") else ""
    settings = SamplingSettings(steps=args.steps, eta=1.0, guidance_scale=5.0, height=height, width=width)
    sampler = AsyncSampler(backend, settings)
    tokens = backend.item_tokens(PROMPT.prompt, PROMPT.items, None, "word")
    seeds = list(range(1234, 1234 + args.batch_size))
    # the pipeline's own call, with eta where its scheduler takes one (DDIM); a video pipeline's frames as PIL
    call = inspect.signature(backend.pipe.__call__).parameters
    eta = {"eta": settings.eta} if "eta" in call else {}
    video = {"num_frames": backend.num_frames, "output_type": "pil"} if "num_frames" in call else {}
    per_prompt = "num_videos_per_prompt" if "num_videos_per_prompt" in call else "num_images_per_prompt"

    def vanilla():
        generators = [torch.Generator(device).manual_seed(s) for s in seeds]
        out = backend.pipe(
            PROMPT.prompt, height=height, width=width, generator=generators, guidance_scale=settings.guidance_scale,
            num_inference_steps=settings.steps, **{per_prompt: len(seeds)}, **eta, **video,
        )
        return out.frames if video else out.images

    def ours(variant):
        def run():
            cond = sampler.encode(PROMPT.prompt, len(seeds))
            result = sampler.sample_variant(variant, cond, seeds, tokens, PROMPT.k)
            return sampler.decode(result.latents)

        return run

    runs = {"vanilla": vanilla, **{v: ours(v) for v in variants}}
    compiled = {}
    if args.compile:  # the same functions, through the compiled regions; the eager ones with them switched off
        backend.compile()
        compiled = {f"{m}_compiled": runs[m] for m in methods}
        runs = {**{m: _eagerly(run) for m, run in runs.items()}, **compiled}
        methods = (*methods, *compiled)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    times, peaks, first = _time_rounds(runs, methods, args.repeats, len(seeds), device, clock)
    compile_summary = _compile_summary("", compiled, times, first, len(seeds))
    if args.compile and device.type == "cuda":  # CUDA graphs: the compiled methods again, recompiled
        torch._dynamo.reset()
        for module in backend.compile_regions():
            module.compile(mode="reduce-overhead", dynamic=False)
        graphed = {f"{m}_reduce_overhead": run for m, run in compiled.items()}
        more_times, more_peaks, more_first = _time_rounds(graphed, tuple(graphed), args.repeats, len(seeds), device,
                                                            clock)
        times, peaks, methods = {**times, **more_times}, {**peaks, **more_peaks}, (*methods, *graphed)
        compile_summary.update(_compile_summary("reduce_overhead_", graphed, more_times, more_first, len(seeds)))

    if args.profile:
        for method in variants:
            print_profile(method, runs[method], device)

    median = {m: statistics.median(times[m]) for m in methods}
    ratios = {}
    for v in variants if args.compile else ():
        for suffix in ("compiled", "reduce_overhead"):
            if f"{v}_{suffix}" in median:
                prefix = "" if suffix == "compiled" else "reduce_overhead_"
                ratios[f"{prefix}compiled_{v}_over_vanilla"] = round(median[f"{v}_{suffix}"] / median["vanilla"], 4)
                ratios[f"{prefix}compiled_{v}_over_compiled_vanilla"] = round(
                    median[f"{v}_{suffix}"] / median[f"vanilla_{suffix}"], 4)
    print(f"model={args.model} device={device} ({_device_name(device)}) precision={args.precision} "
          f"steps={args.steps} batch={args.batch_size} image={height}x{width}{frames} threads={args.threads} "
          f"channels_last={args.channels_last} clock={args.clock} "
          f"torch={torch.__version__}")
    width = max(12, *(len(m) + 2 for m in methods))
    print(f"{'method':<{width}}{'s/image':>10}{'vs vanilla':>12}{'peak MiB':>11}{'peak vs vanilla':>17}")
    for m in methods:
        print(f"{m:<{width}}{median[m]:>10.4f}{median[m] / median['vanilla']:>12.3f}"
              f"{peaks[m] / 2**20:>11.1f}{peaks[m] / peaks['vanilla']:>17.3f}")
    summary = {
        "model": args.model,
        "device": str(device),
        "device_name": _device_name(device),
        "precision": args.precision,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "resolution": height,
        **({"frames": backend.num_frames} if frames else {}),
        "channels_last": args.channels_last,
        "clock": args.clock,
        "variants": variants,
        **{f"{m}_s_per_image": round(median[m], 5) for m in methods},
        **{f"{v}_over_vanilla": round(median[v] / median["vanilla"], 4) for v in variants},
        **({"asyndm_over_dm": round(median["asyndm"] / median["dm"], 4)} if {"dm", "asyndm"} <= set(variants) else {}),
        **{f"{m}_peak_mib": round(peaks[m] / 2**20, 1) for m in methods},
        **{f"{v}_peak_mem_over_vanilla": round(peaks[v] / peaks["vanilla"], 4) for v in variants},
        **ratios,
        **compile_summary,
    }
    print(json.dumps(summary))
    return summary


def _eagerly(run):
    """``run`` with the compiled regions switched off."""
    def eager_run():
        with eager():
            return run()

    return eager_run


def _time_rounds(runs: dict, methods, repeats: int, images: int, device, clock=time.perf_counter):
    """Seconds per image of each method per timed round (round 0 warms up, and compiles), interleaved;
    peak memory; and round 0's whole time per method."""
    times = {m: [] for m in methods}
    peaks = {m: 0 for m in methods}
    first = {}
    for round_ in range(repeats + 1):
        if round_ == 1:
            first["graphs"] = compile_count()
        for method in methods:
            with torch.no_grad(), PeakMemory(device) as memory:
                start = clock()
                runs[method]()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                elapsed = clock() - start
            if round_ == 0:
                first[method] = elapsed
            else:
                times[method].append(elapsed / images)
                peaks[method] = max(peaks[method], memory.peak)
    first["recompiles"] = compile_count() - first.get("graphs", compile_count())
    return times, peaks, first


def _compile_summary(prefix: str, compiled: dict, times: dict, first: dict, images: int) -> dict:
    """``compile_s``: the warm-up round's extra time in the compiled methods (their first calls compile);
    ``recompiles``: graphs compiled during the timed rounds after it."""
    if not compiled:
        return {}
    extra = sum(first[m] - statistics.median(times[m]) * images for m in compiled)
    return {f"{prefix}compile_s": round(extra, 2), f"{prefix}recompiles": first["recompiles"],
            f"{prefix}compiled_methods": list(compiled)}


def print_profile(method: str, run, device) -> None:
    """Where the time goes: the operators of one run, by self time (CUDA time on a GPU)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.no_grad(), torch.profiler.profile(activities=activities) as prof:
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"--- profile: {method}")
    print(prof.key_averages().table(sort_by=key, row_limit=15))


def _device_name(device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
