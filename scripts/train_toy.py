"""Train the toy text-to-image model of the shapes world and save it as a diffusers folder.

    .venv/bin/python scripts/train_toy.py                       # conf/train_toy.yaml
    .venv/bin/python scripts/train_toy.py train.steps=20000 train.device=cuda train.batch_size=128

    .venv/bin/python scripts/train_toy.py --config-name train_toy_context   # the context world's model

Every training image is rendered on the fly from a random generator seeded by (seed, step), so a
resumed run sees exactly the batches an uninterrupted one would. Running the same command again
resumes from `${work_dir}/checkpoint.pt`; `${work_dir}/loss.csv` logs loss and learning rate.
The saved folder (`out_dir`) holds the EMA weights and loads with `asyndm.models.load_backend`.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]

from asyndm.context_world import mixed_training_batch  # noqa: E402
from asyndm.toy_model import build_toy_pipeline, encode_captions, parameter_count  # noqa: E402


def learning_rate(step: int, total: int, cfg) -> float:
    """Linear warm-up, then cosine decay from lr to lr × lr_min_ratio at `total` steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    low = cfg.lr * cfg.lr_min_ratio
    return low + 0.5 * (cfg.lr - low) * (1 + math.cos(math.pi * progress))


def training_loss(pipe, images: torch.Tensor, captions: list[str], generator: torch.Generator) -> torch.Tensor:
    """Denoising loss at uniform random timesteps, on the scheduler's prediction target."""
    scheduler = pipe.scheduler
    batch = images.shape[0]
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator)
    noise = torch.randn(images.shape, generator=generator)
    timesteps, noise = timesteps.to(images.device), noise.to(images.device)
    noisy = scheduler.add_noise(images, noise, timesteps)
    prediction = pipe.unet(noisy, timesteps, encode_captions(pipe, captions)).sample
    kind = scheduler.config.prediction_type
    if kind == "sample":
        target = images
    elif kind == "epsilon":
        target = noise
    else:
        target = scheduler.get_velocity(images, noise, timesteps)
    return torch.nn.functional.mse_loss(prediction, target)


def load_initial_weights(pipe, folder: str) -> dict:
    """Copy the UNet and text encoder weights of a saved toy model into `pipe` (same architecture).

    Returns that model's training.json (empty if it has none), to record what training continued.
    """
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    path = Path(folder)
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"train.init_from={folder}: no model_index.json there; give a folder saved by "
                                f"scripts/train_toy.py (e.g. models/toy)")
    try:
        pipe.unet.load_state_dict(UNet2DConditionModel.from_pretrained(path / "unet").state_dict())
        pipe.text_encoder.load_state_dict(CLIPTextModel.from_pretrained(path / "text_encoder").state_dict())
    except RuntimeError as err:
        raise ValueError(f"train.init_from={folder}: its weights do not fit the model of this config ({err}); "
                         f"set model.* to the architecture in {path / 'training.json'}") from err
    info = path / "training.json"
    return json.loads(info.read_text()) if info.is_file() else {}


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@hydra.main(config_path="../conf", config_name="train_toy", version_base="1.3")
def main(cfg: DictConfig) -> None:
    tcfg = cfg.train
    torch.set_num_threads(int(tcfg.threads))
    device = torch.device("cuda" if tcfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if tcfg.device == "auto" else tcfg.device))
    work_dir, out_dir = Path(cfg.work_dir), Path(cfg.out_dir)
    commit = _git_commit()  # at launch: the code that trains is the code of this commit (plus local changes)
    work_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = work_dir / "checkpoint.pt", work_dir / "loss.csv"

    pipe = build_toy_pipeline(**OmegaConf.to_container(cfg.model), seed=int(tcfg.seed))
    parent = load_initial_weights(pipe, tcfg.init_from) if tcfg.get("init_from") else None
    pipe.unet.to(device).train()
    pipe.text_encoder.to(device).train()
    modules = torch.nn.ModuleDict({"unet": pipe.unet, "text_encoder": pipe.text_encoder})
    ema = {k: v.detach().clone() for k, v in modules.state_dict().items()}
    optimizer = torch.optim.AdamW(modules.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    step, elapsed, total = 0, 0.0, int(tcfg.steps)
    if ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        modules.load_state_dict(state["model"])
        ema = state["ema"]
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed = state["step"], state["elapsed_s"]
        if tcfg.time_budget_min:  # keep the length the budget fixed; otherwise train.steps may extend a run
            total = state["total_steps"]
        print(f"resuming from {ckpt_path} at step {step}")
    print(f"unet {parameter_count(pipe.unet):,} parameters, text encoder {parameter_count(pipe.text_encoder):,}; "
          f"device {device}, {torch.get_num_threads()} threads")

    new_log = not log_path.is_file()
    with open(log_path, "a", newline="") as log_file:
        log = csv.writer(log_file)
        if new_log:
            log.writerow(["step", "loss", "lr", "elapsed_s"])
        bar = tqdm(total=total, initial=step, desc="train_toy", dynamic_ncols=True)
        start, running = time.time() - elapsed, []
        while step < total:
            lr = learning_rate(step, total, tcfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images, captions = mixed_training_batch(np.random.default_rng([int(tcfg.seed), step]),
                                                    int(tcfg.batch_size), float(tcfg.get("context_share", 0.0)))
            rng = np.random.default_rng([int(tcfg.seed), step, 1])
            captions = ["" if rng.random() < tcfg.cond_drop else c for c in captions]
            generator = torch.Generator().manual_seed(int(tcfg.seed) * 1_000_003 + step)
            loss = training_loss(pipe, torch.from_numpy(images).to(device), captions, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(modules.parameters(), tcfg.grad_clip)
            optimizer.step()
            step += 1
            decay = min(float(tcfg.ema_decay), (1 + step) / (10 + step))
            with torch.no_grad():
                for key, value in modules.state_dict().items():
                    if value.is_floating_point():
                        ema[key].mul_(decay).add_(value.detach(), alpha=1 - decay)
                    else:
                        ema[key].copy_(value)
            running.append(loss.item())
            bar.update(1)
            if tcfg.time_budget_min and step == max(50, tcfg.warmup_steps):
                # fit the decay into the time budget, once, from the measured speed
                per_step = (time.time() - start) / step
                fit = int(tcfg.time_budget_min * 60 / per_step)
                if fit < total:
                    total = max(step + 1, fit)
                    bar.total = total
                    print(f"\ntime budget {tcfg.time_budget_min} min at {per_step:.2f} s/step: "
                          f"training {total} steps")
            if step % tcfg.log_every == 0 or step == total:
                mean = sum(running) / len(running)
                running = []
                log.writerow([step, f"{mean:.6f}", f"{lr:.3e}", f"{time.time() - start:.1f}"])
                log_file.flush()
                bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.1e}")
            if step % tcfg.checkpoint_every == 0 or step == total:
                torch.save({"model": modules.state_dict(), "ema": ema, "optimizer": optimizer.state_dict(),
                            "step": step, "elapsed_s": time.time() - start, "total_steps": total},
                           ckpt_path.with_suffix(".tmp"))
                ckpt_path.with_suffix(".tmp").replace(ckpt_path)
        bar.close()

    modules.load_state_dict(ema)
    pipe.unet.eval().to("cpu")
    pipe.text_encoder.eval().to("cpu")
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out_dir)
    info = {"steps": step, "batch_size": int(tcfg.batch_size), "train_seconds": round(time.time() - start, 1),
            "final_loss_mean_last_100": _tail_mean(log_path, 100), "git_commit": commit,
            "command": " ".join(sys.argv), "config": OmegaConf.to_container(cfg, resolve=True)}
    if parent is not None:  # continued from a saved model: keep its record
        info["init_from"] = {"path": str(tcfg.init_from), "training": parent}
    (out_dir / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"saved {out_dir} after {step} steps")


def _tail_mean(log_path: Path, last_steps: int) -> float:
    rows = list(csv.DictReader(open(log_path)))
    if not rows:
        return math.nan
    last = int(rows[-1]["step"])
    tail = [float(r["loss"]) for r in rows if int(r["step"]) > last - last_steps]
    return round(sum(tail) / len(tail), 6)


if __name__ == "__main__":
    main()
