"""PerHorizonEval: the per-horizon evaluation as a Lightning callback, every N validation epochs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from pipeline.eval.features import Extractors, build_extractors
from pipeline.eval.leaderboard import strip_frames, write_gif
from pipeline.eval.rollout import DEFAULT_HORIZONS, EvalClips, build_record, collect_clips, run_horizons, write_eval


class PerHorizonEval(pl.Callback):
    """Rolls the model out from a fixed, seeded set of validation clips for each horizon and logs
    `eval/METRIC@h` (synced across ranks); rank 0 writes eval.json into `out_dir`."""

    def __init__(
        self,
        every_n_val_epochs: int = 1,
        horizons: tuple[int, ...] = DEFAULT_HORIZONS,
        context: int | None = None,
        samples: int = 16,
        seed: int = 0,
        batch_size: int = 8,
        out_dir: str | None = None,
        i3d_weights: str | None = None,
        lpips_net: str = "alex",
        fvd: bool = True,
        lpips: bool = True,
        random_weights: bool = False,
    ) -> None:
        """
        Args:
            every_n_val_epochs: evaluate after every N-th validation epoch (sanity checks excluded).
            horizons: predicted frames after the context; longer ones come from autoregressive rollout.
            context: context frames (default: the model's context_frames).
            samples: evaluation clips over all ranks (the first ones of the validation stream, kept fixed).
            seed: seed of the rollouts (stochastic models give the same numbers on a rerun).
            batch_size: clips per rollout call.
            out_dir: where eval.json files go (default: TRAINER_LOG_DIR/eval).
            i3d_weights: I3D weights file (default: $WM_I3D_WEIGHTS, then the cache); absent means no FVD.
            lpips_net: LPIPS backbone, alex or vgg (weights from torchvision's cache under TORCH_HOME).
            fvd: compute FVD (needs I3D weights; slow on a CPU).
            lpips: compute LPIPS (needs the backbone weights).
            random_weights: development only: random feature extractors when weights are absent, reported
                as fvd_random_weights / lpips_random_weights, never as fvd / lpips.
        """
        super().__init__()
        if every_n_val_epochs < 1:
            raise ValueError(f"every_n_val_epochs must be >= 1, got {every_n_val_epochs}")
        self.every, self.horizons = every_n_val_epochs, sorted({int(h) for h in horizons})
        self.context, self.samples, self.seed, self.batch_size = context, samples, seed, batch_size
        self.out_dir = out_dir
        self.extractor_args = dict(i3d_weights=i3d_weights, lpips_net=lpips_net, fvd=fvd, lpips=lpips,
                                   random_weights=random_weights)
        self._clips: EvalClips | None = None
        self._ex: Extractors | None = None
        self._val_epochs = 0
        self.last_record: dict[str, Any] | None = None

    def _context(self, pl_module: pl.LightningModule) -> int:
        return int(self.context or getattr(pl_module, "context_frames", 1))

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # fail before training, not after the first epoch, when validation clips are too short
        frames = getattr(trainer.datamodule, "hparams", {}).get("frames") if trainer.datamodule else None
        need = self._context(pl_module) + self.horizons[-1]
        if frames is not None and frames < need:
            raise ValueError(f"PerHorizonEval needs clips of context + max horizon = {need} frames, the data "
                             f"module gives {frames}: raise data.frames or lower the horizons")
        if self._ex is None:  # a missing weights file named explicitly fails now, not after an epoch
            self._ex = build_extractors(device=pl_module.device, **self.extractor_args)

    def _val_batches(self, trainer: pl.Trainer) -> Any:
        loaders = trainer.val_dataloaders
        return loaders[0] if isinstance(loaders, (list, tuple)) else loaders

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._val_epochs += 1
        if self._val_epochs % self.every:
            return
        context = self._context(pl_module)
        if self._clips is None:  # the fixed subset: the first clips of this rank's validation stream
            per_rank = max(1, math.ceil(self.samples / trainer.world_size))
            self._clips = collect_clips(self._val_batches(trainer), per_rank, context + self.horizons[-1])
        if self._ex is None:
            self._ex = build_extractors(device=pl_module.device, **self.extractor_args)
        result, strips = run_horizons(pl_module, self._clips, self.horizons, context, self._ex, seed=self.seed,
                                      batch_size=self.batch_size)
        for h, values in result["metrics"].items():
            for name, value in values.items():
                if name != "count":
                    pl_module.log(f"eval/{name}@{h}", value, rank_zero_only=True)
        spec = {k: v for k, v in dict(getattr(trainer.datamodule, "hparams", {}) or {}).items()
                if k in ("frame_stride", "fps", "resolution", "seed") and v is not None}
        data = getattr(trainer.datamodule, "val_shards", None) or "validation dataloader"
        record = build_record(
            result, model=pl_module, data=data, horizons=self.horizons, context=context, samples=self.samples,
            seed=self.seed, ex=self._ex, spec=spec or {"source": "validation dataloader"},
            checkpoint=f"in training: epoch {trainer.current_epoch}, global step {trainer.global_step}",
        )
        self.last_record = record
        if trainer.is_global_zero:
            out_dir = Path(self.out_dir or Path(trainer.log_dir or trainer.default_root_dir) / "eval")
            name = f"eval-step{trainer.global_step:08d}"
            write_eval(record, strips, out_dir / f"{name}.json")
            write_eval(record, strips, out_dir / "eval.json")
            gif = None
            if strips:  # context | truth | prediction, also what wandb shows
                gif = out_dir / f"{name}.gif"
                write_gif(strip_frames(strips), gif)
            _log_wandb(trainer, record, gif)


def _log_wandb(trainer: pl.Trainer, record: dict[str, Any], gif: Path | None) -> None:
    """The same table and sample strip in wandb, when a WandbLogger is attached."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            names = sorted({m for values in record["metrics"].values() for m in values})
            rows = [[int(h), *[values.get(m) for m in names]] for h, values in record["metrics"].items()]
            payload: dict[str, Any] = {"eval/table": wandb.Table(columns=["horizon", *names], data=rows)}
            if gif is not None:  # a file path: wandb needs no video encoder for it
                payload["eval/samples"] = wandb.Video(str(gif), format="gif")
            logger.experiment.log(payload, step=trainer.global_step)
