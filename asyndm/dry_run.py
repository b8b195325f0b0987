"""``dry_run=true``: what a run would do, and about how long it would take, without loading a model.

The estimate uses only figures measured for this project (docs/performance.md, docs/toy-world.md), scaled by steps
and images; where none was measured for the model and device, it says so instead of guessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from . import config as config_mod
from .run_folder import manifest_name, recorded_files
from .plan import load_run_prompts, missing_variants, plan_batches, shard_batches
from .variants import get_variant, ordered

# (model.name, device type) → (seconds per image and model call of plain sampling, where measured).
MEASURED = {
    ("sd21-base", "cuda"): (0.3275 / 50, "docs/performance.md: H100, fp16, batch 8, 512 px"),
    ("tiny", "cpu"): (1.5469 / 20, "docs/performance.md: 2-core CPU, one thread, batch 4"),
    # experiment=toy_context: 829 s for 4 variants × 400 images × 25 calls, scoring included (toy-world.md §8.5)
    ("toy", "cpu"): (829 / (1620 * 25), "docs/toy-world.md §8.5: 2-core CPU, batch 10, scoring included"),
    ("toy_context", "cpu"): (829 / (1620 * 25), "docs/toy-world.md §8.5: 2-core CPU, batch 10, scoring included"),
}
# Time of a variant relative to plain sampling: asyndm_over_dm measured 1.035-1.049; the baselines
# by their UNet passes per image (docs/baselines.md; Attend-and-Excite by its measured time).
VARIANT_COST = {"dm": 1.0, "dm_concave": 1.0, "asyndm": 1.05, "asyndm_oracle": 1.0, "cfgpp": 1.0, "scfg": 1.0, "seg": 1.5,
                "zsampling": 2.47, "attend_excite": 2.5}


def variant_cost(name: str) -> float:
    """A composed variant (asyndm+cfgpp) costs its schedule's and its rule's extra work together."""
    cost = 1.0
    for part in name.split("+"):
        cost *= VARIANT_COST.get(part, 1.0)
    return cost


@dataclass
class Plan:
    prompts: int
    images_per_prompt: int
    variants: list[str]
    batches: int
    batches_missing: int
    images_missing: dict[str, int]
    extra_dm_pass_images: int  # static and oracle masks need a dm pass even where dm's images exist
    seconds: float | None
    basis: str


def make_plan(cfg: DictConfig, run_dir: Path, device: str) -> Plan:
    specs = load_run_prompts(cfg)
    s = cfg.sample
    variants = ordered(cfg.variants)
    batches = shard_batches(plan_batches(specs, s.images_per_prompt, s.batch_size, cfg.seed),
                            cfg.shard.index, cfg.shard.count)
    missing = {v: 0 for v in variants}
    batches_missing = 0
    extra = 0
    static = cfg.mask.name == "static"
    records = recorded_files(run_dir, manifest_name(cfg.shard.index, cfg.shard.count))
    for batch in batches:
        todo = missing_variants(run_dir, batch, variants, cfg.save, records)
        batches_missing += bool(todo)
        for v in todo:
            missing[v] += len(batch)
        needs_dm = [v for v in todo if get_variant(v).schedule == "async"
                    and (static or get_variant(v).masks == "oracle")]
        if needs_dm and "dm" not in todo:
            extra += len(batch)
    steps = int(s.steps)
    measured = MEASURED.get((str(cfg.model.name), device))
    seconds, basis = None, f"no figure measured for model={cfg.model.name} on {device}; time a small run first"
    if measured:
        per_step, where = measured
        calls = sum(n * variant_cost(v) for v, n in missing.items()) + extra
        seconds = calls * steps * per_step
        basis = f"measured in {where}; {steps} steps"
    return Plan(len(specs), int(s.images_per_prompt), variants, len(batches), batches_missing, missing, extra,
                seconds, basis)


def format_plan(plan: Plan, run_dir: Path) -> str:
    total = plan.prompts * plan.images_per_prompt
    lines = [
        f"dry run: {run_dir}",
        f"  {plan.prompts} prompts x {plan.images_per_prompt} images x {len(plan.variants)} variants "
        f"({', '.join(plan.variants)}) = {total * len(plan.variants)} images",
        f"  batches: {plan.batches_missing} of {plan.batches} still to sample"
        + ("" if plan.batches_missing < plan.batches else " (nothing sampled yet)"),
        "  missing: " + ", ".join(f"{v} {n}" for v, n in plan.images_missing.items()),
    ]
    if plan.extra_dm_pass_images:
        lines.append(f"  plus a dm pass for the static or oracle masks of {plan.extra_dm_pass_images} images")
    if plan.seconds is None:
        lines.append(f"  time: {plan.basis}")
    else:
        lines.append(f"  time: about {_duration(plan.seconds)} ({plan.basis})")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def dry_run(cfg: DictConfig, run_dir: Path) -> Plan:
    """Validate, print the plan, touch nothing."""
    config_mod.validate(cfg)
    plan = make_plan(cfg, run_dir, config_mod.device_type(cfg))
    print(format_plan(plan, run_dir), flush=True)
    return plan
