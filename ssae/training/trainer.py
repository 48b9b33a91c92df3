"""Stage-wise training of a scale-space autoencoder (paper, Eqs. 3-4 and section 3.2).

Levels are trained one after another, coarsest first (one-hot ``lambda``). While level ``k``
trains, the coarser networks are frozen and only supply ``Î_{k+1}``; the loss is
``l2(I_k, u(Î_{k+1}) + M_k(H_k))`` on the reconstructed *image*, not on the band, so that
``M_k`` also absorbs the upsampling error. A plain autoencoder is the one-level case.

Around that core, what a long-running job needs:

* validation on held-out *subjects* (never slices of a training subject), early stopping with
  ``patience`` epochs, the best weights of each level kept;
* a resume state written atomically after every epoch and whenever training is asked to stop
  (Ctrl-C, SIGTERM from a GUI's Cancel): ``--resume`` continues at the same step with the same
  data order, because every epoch's order is derived from (seed, level, epoch);
* CUDA with automatic mixed precision when present, CPU otherwise;
* several GPUs with ``torchrun``: DistributedDataParallel and DistributedSampler; only rank 0
  writes files;
* a JSON-lines progress log and a terminal progress bar (:mod:`ssae.io.progress`).

Why one module: the :class:`Trainer` is one piece of state (networks, optimiser, sampler, the
level and epoch being trained, the best weights so far) that the level loop, the resume state
and the distributed set-up all read and change at the same step boundaries; split into modules
they would hand that state back and forth and the resume contract (same step, same order)
would be spread over files. Distributed helpers and the run controls already live apart
(:mod:`ssae.training.run_control`, :mod:`ssae.training.slice_cache`).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from ssae.detection.detector import Detector
from ssae.io.cases import Case
from ssae.io.errors import SSAEError, TrainingInterrupted
from ssae.io.progress import ProgressLog
from ssae.io.writing import atomic_path
from ssae.models.card import Calibration, ModelCard, current_versions
from ssae.models.checkpoint import save_model
from ssae.models.devices import describe_device, resolve_device
from ssae.models.losses import level_loss
from ssae.models.networks import ScaleSpaceAutoencoder, aggregated_levels, build_model, count_parameters
from ssae.training.calibration import calibrate_card, reconstruction_fidelity
from ssae.training.config import RESUME_SUFFIX, TrainingConfig, split_subjects
from ssae.training.defaults import DEFAULTS_EVIDENCE
from ssae.training.run_control import Distributed, LevelState, StopRequest
from ssae.training.slice_cache import SliceStack, default_cache_dir, healthy_scans, load_slice_stack


class Trainer:
    """Runs one training job; construct, then call :meth:`run`."""

    def __init__(
        self,
        cases: list[Case],
        config: TrainingConfig,
        output: str | Path,
        device: str = "auto",
        resume: bool = False,
        overwrite: bool = False,
        cache_dir: Path | None = None,
        progress: ProgressLog | None = None,
        description: str = "",
        data_summary: dict[str, Any] | None = None,
    ) -> None:
        self.cases = cases
        self.config = config
        self.output = Path(output)
        self.resume_path = self.output.with_name(self.output.name + RESUME_SUFFIX)
        self.dist = Distributed(resolve_device(device))
        self.device = self.dist.device
        self.progress = progress if (progress is not None and self.dist.main) else ProgressLog(enabled=False)
        self.cache_dir = cache_dir
        self.description = description
        self.data_summary = data_summary or {}
        self.resume = resume
        self.amp = (self.device.type == "cuda") if config.amp is None else config.amp
        if self.amp and self.device.type != "cuda":
            raise SSAEError("mixed precision (--amp) needs a CUDA device")
        self.amp_dtype = torch.bfloat16 if (self.amp and torch.cuda.is_bf16_supported()) else torch.float16
        if self.output.exists() and not overwrite and not resume:
            raise SSAEError(f"{self.output} already exists; pass --overwrite to replace it")
        if resume and not self.resume_path.exists():
            raise SSAEError(f"nothing to resume: {self.resume_path} does not exist")
        if not resume and self.resume_path.exists():
            raise SSAEError(f"{self.resume_path} holds an interrupted run for this output; pass --resume to continue it or delete it")
        self.train_subjects, self.val_subjects = split_subjects([c.name for c in cases], config.val_fraction, config.seed)

    # -- data -------------------------------------------------------------------------------
    def _load_data(self) -> SliceStack:
        log = self.progress.message
        if self.dist.main:
            stack = load_slice_stack(self.cases, self.config.preprocessing, self.cache_dir, log)
        self.dist.barrier()
        if not self.dist.main:
            stack = load_slice_stack(self.cases, self.config.preprocessing, self.cache_dir, lambda m: None)
        return stack

    def _batch(self, stack: SliceStack, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.sort(rows)
        x = torch.from_numpy(np.asarray(stack.slices[rows], dtype=np.float32))[:, None]
        keep = torch.from_numpy(np.asarray(stack.loss_mask[rows], dtype=np.float32))[:, None]
        return x.to(self.device, non_blocking=True), keep.to(self.device, non_blocking=True)

    def _level_loss(
        self, model: ScaleSpaceAutoencoder, net: torch.nn.Module, level: int, x: torch.Tensor, keep: torch.Tensor
    ) -> tuple[torch.Tensor, float]:
        return level_loss(model, level, x, keep, net=net, kl_weight=self.config.kl_weight, amp_dtype=self.amp_dtype if self.amp else None)

    def _validate(self, model: ScaleSpaceAutoencoder, level: int, stack: SliceStack, rows: np.ndarray) -> float:
        net = model.nets[level]
        net.eval()
        shard = rows[self.dist.rank :: self.dist.world_size]
        total, count = 0.0, 0.0
        with torch.no_grad():
            for start in range(0, len(shard), self.config.batch_size):
                x, keep = self._batch(stack, shard[start : start + self.config.batch_size])
                loss, weight = self._level_loss(model, net, level, x, keep)
                total += float(loss) * len(x)
                count += len(x)
        total, count = self.dist.sum([total, count])
        return total / max(count, 1.0)

    # -- resume state -------------------------------------------------------------------------
    def _save_state(
        self,
        model: ScaleSpaceAutoencoder,
        optimizer: torch.optim.Optimizer,
        state: LevelState,
        stack: SliceStack,
        history: list,
        elapsed: float,
    ) -> None:
        if not self.dist.main:
            return
        payload = {
            "format": "ssae-resume",
            "config": self.config.to_dict(),
            "data_key": stack.key,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "level_state": {k: v for k, v in asdict(state).items() if k != "best_weights"},
            "best_weights": state.best_weights or {},
            "history": history,
            "elapsed": elapsed,
        }
        with atomic_path(self.resume_path, overwrite=True) as tmp:
            torch.save(payload, tmp)

    def _load_state(self, stack: SliceStack) -> dict[str, Any]:
        try:
            payload = torch.load(self.resume_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a damaged file
            raise SSAEError(f"cannot read resume state {self.resume_path}: {type(exc).__name__}") from None
        if not isinstance(payload, dict) or payload.get("format") != "ssae-resume":
            raise SSAEError(f"{self.resume_path} is not an SSAE resume state")
        if payload["config"] != self.config.to_dict():
            raise SSAEError("the resume state was made with different settings; rerun with the original options")
        if payload["data_key"] != stack.key:
            raise SSAEError("the resume state was made on different training data")
        return payload

    # -- main loop ------------------------------------------------------------------------------
    def run(self) -> Path:
        try:
            with StopRequest() as stop:
                return self._run(stop)
        except TrainingInterrupted as exc:
            self.progress.event("interrupted", message=str(exc))
            raise
        except SSAEError as exc:
            self.progress.event("error", message=str(exc))
            raise
        finally:
            self.dist.close()

    def _run(self, stop: StopRequest) -> Path:
        cfg, arch = self.config, self.config.architecture
        started = time.time()
        stack = self._load_data()
        train_rows, val_rows = stack.rows_of(self.train_subjects), stack.rows_of(self.val_subjects)
        torch.manual_seed(cfg.seed)
        model = build_model(arch).to(self.device)
        history: list[dict[str, Any]] = []
        elapsed_before = 0.0
        state = LevelState(level=model.coarsest)
        optimizer_state = None
        if self.resume:
            payload = self._load_state(stack)
            model.load_state_dict(payload["model"])
            state = LevelState(**payload["level_state"], best_weights=payload["best_weights"] or None)
            optimizer_state = payload["optimizer"]
            history = payload["history"]
            elapsed_before = payload["elapsed"]
            self.progress.message(f"resuming at level {state.level}, epoch {state.epoch}, step {state.step}")

        steps_per_epoch = math.ceil(math.ceil(len(train_rows) / self.dist.world_size) / cfg.batch_size)
        self.progress.event(
            "start",
            model=arch.name,
            parameters=count_parameters(arch),
            levels=arch.levels,
            max_epochs=cfg.max_epochs,
            steps_per_epoch=steps_per_epoch,
            train_slices=len(train_rows),
            val_slices=len(val_rows),
            train_subjects=len(self.train_subjects),
            val_subjects=len(self.val_subjects),
            device=describe_device(self.device),
            world_size=self.dist.world_size,
            amp=self.amp,
        )
        seconds_per_step: float | None = None
        for level in range(state.level, -1, -1):
            if level != state.level:
                state = LevelState(level=level)
                optimizer_state = None
            for k, net in enumerate(model.nets):
                net.requires_grad_(k == level)
            net = model.nets[level]
            wrapped = (
                DistributedDataParallel(net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
                if self.dist.active
                else net
            )
            optimizer = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate)
            if optimizer_state is not None:
                optimizer.load_state_dict(optimizer_state)
            scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)
            sampler = DistributedSampler(
                range(len(train_rows)), num_replicas=self.dist.world_size, rank=self.dist.rank, shuffle=True, seed=cfg.seed + 1009 * level
            )
            while state.epoch < cfg.max_epochs and state.bad_epochs < cfg.patience:
                sampler.set_epoch(state.epoch)
                torch.manual_seed(cfg.seed + 1009 * level + 7919 * state.epoch + state.step)
                order = train_rows[np.fromiter(iter(sampler), dtype=np.int64)]
                batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
                net.train()
                for step in range(state.step, len(batches)):
                    if self.dist.any(stop.requested):
                        state.step = step
                        self._save_state(model, optimizer, state, stack, history, elapsed_before + time.time() - started)
                        raise TrainingInterrupted(
                            f"training stopped at level {level}, epoch {state.epoch}, step {step}; "
                            f"state saved to {self.resume_path}; continue with --resume"
                        )
                    tic = time.time()
                    x, keep = self._batch(stack, batches[step])
                    loss, _ = self._level_loss(model, wrapped, level, x, keep)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    loss_value = loss.item()
                    if not math.isfinite(loss_value):
                        raise SSAEError(f"training diverged (loss {loss_value}) at level {level}; try a smaller learning rate")
                    state.loss_sum += loss_value * len(x)
                    state.loss_count += len(x)
                    took = time.time() - tic
                    seconds_per_step = took if seconds_per_step is None else 0.9 * seconds_per_step + 0.1 * took
                    if step % 10 == 0 or step == len(batches) - 1:
                        self.progress.event(
                            "step",
                            level=level,
                            epoch=state.epoch,
                            step=step + 1,
                            steps=len(batches),
                            loss=loss_value,
                            eta_s=self._eta(seconds_per_step, level, state, len(batches), step + 1),
                        )
                state.step = 0
                train_loss = self.dist.sum([state.loss_sum, state.loss_count])
                train_loss_value = train_loss[0] / max(train_loss[1], 1.0)
                state.loss_sum = state.loss_count = 0.0
                val_loss = self._validate(model, level, stack, val_rows)
                if val_loss < state.best_val:
                    state.best_val, state.bad_epochs = val_loss, 0
                    state.best_weights = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
                else:
                    state.bad_epochs += 1
                state.epoch += 1
                history.append({"level": level, "epoch": state.epoch, "train_loss": train_loss_value, "val_loss": val_loss})
                self.progress.event(
                    "epoch",
                    level=level,
                    epoch=state.epoch,
                    train_loss=train_loss_value,
                    val_loss=val_loss,
                    best_val_loss=state.best_val,
                    bad_epochs=state.bad_epochs,
                    eta_s=self._eta(seconds_per_step, level, state, len(batches), 0),
                )
                self._save_state(model, optimizer, state, stack, history, elapsed_before + time.time() - started)
            assert state.best_weights is not None
            net.load_state_dict(state.best_weights)
            net.requires_grad_(False)
            self.progress.event(
                "level_done", level=level, epochs=state.epoch, best_val_loss=state.best_val, stopped_early=state.bad_epochs >= cfg.patience
            )
            if level > 0:  # the finished level's best weights are the resume point for the next
                next_state = LevelState(level=level - 1)
                self._save_state(
                    model,
                    torch.optim.Adam(model.nets[level - 1].parameters(), lr=cfg.learning_rate),
                    next_state,
                    stack,
                    history,
                    elapsed_before + time.time() - started,
                )

        return self._finish(model, stack, history, elapsed_before + time.time() - started)

    def _eta(self, seconds_per_step: float | None, level: int, state: LevelState, steps: int, step: int) -> float | None:
        """Upper bound: the rest of this level at the epoch limit, finer levels likewise (4x cost each)."""
        if seconds_per_step is None:
            return None
        cfg = self.config
        this_level = (cfg.max_epochs - state.epoch) * steps - step
        finer = sum(cfg.max_epochs * steps * 4 ** (level - k) for k in range(level))
        return round(seconds_per_step * (this_level + finer), 1)

    def _finish(self, model: ScaleSpaceAutoencoder, stack: SliceStack, history: list, elapsed: float) -> Path:
        cfg, arch = self.config, self.config.architecture
        card = ModelCard(
            architecture=arch,
            preprocessing=cfg.preprocessing,
            postprocessing=cfg.postprocessing,
            aggregated_levels=aggregated_levels(arch.levels),
            thresholds={cfg.score_map: 0.0},
            calibration=Calibration(method="not calibrated"),
            score_map=cfg.score_map,
            selection=DEFAULTS_EVIDENCE,
            description=self.description,
        )
        if self.dist.main:
            detector = Detector(model, card, self.device)
            validation = [case for case in self.cases if case.name in self.val_subjects]
            cache_root = Path(self.cache_dir or default_cache_dir())
            calibrate_card(
                card,
                detector,
                lambda: healthy_scans(validation, cfg.preprocessing, cache_root, self.progress.message),
                cfg.threshold_percentile,
                cfg.adaptation,
                cfg.adapt_by_default,
                self.progress.message,
            )
            card.fidelity = {
                "l1_per_level": reconstruction_fidelity(detector, stack, self.val_subjects),
                "measured_on": f"brain pixels of {len(stack.rows_of(self.val_subjects))} validation slices",
            }
            self.progress.event(
                "calibrated", score_map=cfg.score_map, threshold=card.thresholds[cfg.score_map], percentile=cfg.threshold_percentile
            )
            best = {}
            for record in history:
                key = f"level{record['level']}"
                best[key] = min(best.get(key, math.inf), record["val_loss"])
            card.training = {
                "config": cfg.to_dict(),
                "data": {
                    **self.data_summary,
                    "subjects": len(self.cases),
                    "train_subjects": self.train_subjects,
                    "val_subjects": self.val_subjects,
                    "train_slices": len(stack.rows_of(self.train_subjects)),
                    "val_slices": len(stack.rows_of(self.val_subjects)),
                    "lesion_voxels_excluded_from_loss": stack.excluded_voxels,
                },
                "optimizer": f"Adam, learning rate {cfg.learning_rate}, batch size {cfg.batch_size}",
                "schedule": "stage-wise, coarsest level first, coarser levels frozen (one-hot lambda)",
                "early_stopping": f"validation loss on held-out subjects, patience {cfg.patience} epochs, at most {cfg.max_epochs} epochs per level, best epoch's weights kept",
                "best_val_loss_per_level": best,
                "epochs_per_level": {f"level{k}": sum(1 for r in history if r["level"] == k) for k in range(arch.levels)},
                "history": history,
                "seed": cfg.seed,
                "device": describe_device(self.device),
                "world_size": self.dist.world_size,
                "mixed_precision": str(self.amp_dtype).replace("torch.", "") if self.amp else "off",
                "duration_s": round(elapsed, 1),
            }
            card.versions = current_versions()
            save_model(model, card, self.output, overwrite=True)
            self.resume_path.unlink(missing_ok=True)
            self.progress.event("done", model=str(self.output), duration_s=round(elapsed, 1), threshold=card.thresholds[cfg.score_map])
        self.dist.barrier()
        return self.output


def train(cases: list[Case], config: TrainingConfig, output: str | Path, **options: Any) -> Path:
    """Train a model on healthy ``cases`` and write it to ``output``; see :class:`Trainer`."""
    return Trainer(cases, config, output, **options).run()
