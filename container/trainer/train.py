"""Transfer-learning trainer: the program the sagemaker-training toolkit runs.

    train.py --lr 0.001 --batch-size 64 --epochs 5 ...   (see hyperparameters.py)

One loop in the style of torchvision's reference script: build data, model
and optimiser; per epoch train, validate, checkpoint; at the end restore the
best epoch (lowest validation loss), score the test set once, and write the
model artifact (contract/artifact.py) and the evaluation report.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from contract import artifact
from contract.model import STAGES, Architecture, build_classifier
from contract.preprocess import Preprocessing
from contract.spec import hyperparameters, metrics
from contract.spec.artifact import TrainingSummary
from trainer import data, debugger, feature_cache, profiler, report, runtime, weights
from trainer.checkpoint import Checkpointer, TrainingState, frozen_keys, rng_state, set_rng_state, state_digest
from trainer.heldout import spread


def log(dist_info, message: str) -> None:
    if dist_info.is_main:
        print(message, flush=True)


def amp_dtype(hp, device) -> torch.dtype | None:
    """Mixed precision: fp16/bf16 on CUDA by default, bf16 on CPUs that do it natively."""
    if hp.amp is False:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    native_bf16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if hp.amp is True or native_bf16:
        return torch.bfloat16
    return None


def init_head(head: nn.Module, scheme: str) -> None:
    for layer in head.modules():
        if isinstance(layer, nn.Linear) and scheme != "default":
            if scheme == "kaiming":
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)


def freeze(model, trainable_layers: int) -> list[nn.Module]:
    """Freeze all but the head and the top `trainable_layers` stages; return the frozen modules."""
    if trainable_layers > len(STAGES):
        raise hyperparameters.HyperparameterError(
            f"hyperparameter trainable-layers: at most {len(STAGES)} stages ({', '.join(STAGES)})")
    frozen = [m for stage in STAGES[trainable_layers:] for m in model.stage_modules(stage)]
    for module in frozen:
        module.requires_grad_(False)
    return frozen


def set_train_mode(model: nn.Module, frozen: list[nn.Module]) -> None:
    # Frozen stages keep their BatchNorm statistics: train() would update them
    # from every batch even though no weight of theirs is trained.
    model.train()
    for module in frozen:
        module.eval()


def make_optimizer(hp, params):
    if hp.optimizer == "sgd":
        return torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay, nesterov=hp.momentum > 0)
    return torch.optim.AdamW(params, lr=hp.lr, eps=hp.eps, weight_decay=hp.weight_decay)


def make_schedule(hp, optimizer, steps_per_epoch: int):
    warmup = hp.warmup * steps_per_epoch
    total = max(hp.epochs * steps_per_epoch, 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if hp.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class EvalShard(torch.utils.data.Sampler):
    """Every `world`-th sample from `rank`: no padding, so DDP metrics are exact."""

    def __init__(self, length, rank, world):
        self.indices = list(range(rank, length, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


class SkipFirst(torch.utils.data.Sampler):
    """A sampler's order without its first `count` indices: the rest of an epoch a stopped job began."""

    def __init__(self, sampler, count: int):
        self.sampler, self.count = sampler, count

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.count, None)

    def __len__(self):
        return max(len(self.sampler) - self.count, 0)


def loader(dataset, hp, dist_info, train: bool, epoch: int = 0, first_batch: int = 0):
    """Evaluation: this rank's share in order. Training: epoch `epoch`'s order, a function of the seed
    and the epoch alone, from batch `first_batch` on."""
    if train and dist_info.world_size > 1:
        sampler = DistributedSampler(dataset, dist_info.world_size, dist_info.rank, shuffle=True, seed=hp.seed)
        sampler.set_epoch(epoch)
    elif train:
        sampler = torch.utils.data.RandomSampler(dataset, generator=torch.Generator().manual_seed(hp.seed + epoch))
    else:
        sampler = EvalShard(len(dataset), dist_info.rank, dist_info.world_size)
    if first_batch:
        sampler = SkipFirst(sampler, first_batch * hp.batch_size)
    # worker processes pay off for decoding images; for tensors already in memory their start-up is all cost
    workers = 0 if getattr(dataset, "in_memory", False) else data.worker_count(hp.num_workers)
    return DataLoader(dataset, batch_size=hp.batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=data.collate, pin_memory=torch.cuda.is_available(),
                      worker_init_fn=runtime.ignore_sigterm_in_worker, persistent_workers=False,
                      prefetch_factor=4 if workers else None)


class Trainer:
    def __init__(self, hp, paths: runtime.Paths, dist_info, device):
        self.hp, self.paths, self.dist, self.device = hp, paths, dist_info, device
        self.stop = runtime.StopFlag()
        self.skips = data.SkipTracker()
        self.prep = Preprocessing.for_image_size(hp.image_size)
        self.amp = amp_dtype(hp, device)
        self.memory_format = torch.channels_last if hp.channels_last else torch.contiguous_format
        self.debugger, self.profiler = debugger.NullDebugger(), profiler.NullProfiler()
        self.tensorboard = None

    # -- set-up -----------------------------------------------------------
    def setup(self):
        hp = self.hp
        torch.manual_seed(hp.seed)
        self.splits = data.discover(self.paths.scratch, hp.val_fraction, hp.seed)
        s = self.splits
        log(self.dist, f"data: {len(s.class_names)} classes, {len(s.train)} training, "
                       f"{len(s.validation)} validation, {len(s.test)} test images")
        # the feature cache needs one deterministic view of each image: no augmentation
        augment = hp.augment and not hp.feature_cache
        self.train_set = data.ImageDataset(s.train, self.prep, train=augment, seed=hp.seed,
                                           crop_scale=hp.crop_scale)
        self.val_set = data.ImageDataset(s.validation, self.prep, train=False)
        self.test_set = data.ImageDataset(s.test, self.prep, train=False)

        self.arch = Architecture(hp.backbone, len(s.class_names), list(hp.head), hp.dropout)
        model = build_classifier(self.arch)
        source = weights.resolve(hp.pretrained, hp.backbone, data.channel_dir("pretrained"))
        if source is not None:
            weights.load_backbone(model, source)
            log(self.dist, f"backbone {hp.backbone} initialised from {source.name}")
        elif hp.trainable_layers == 0:  # asked for explicitly (the default trains every stage then)
            log(self.dist, "warning: pretrained none and trainable-layers 0: the head learns from a frozen, "
                           "random backbone's features")
        init_head(model.fc, hp.init)
        self.frozen = freeze(model, hp.trainable_layers)
        self.frozen_keys = frozen_keys(model, self.frozen)
        # identifies the frozen weights (the checkpoint and the feature cache leave them out)
        state = model.state_dict()
        self.frozen_digest = state_digest({k: state[k] for k in self.frozen_keys})
        self.model = model.to(self.device, memory_format=self.memory_format)
        # what the loops feed: images to the whole model, or cached features to the head
        self.forward_model, self.input_format = self.model, self.memory_format
        if hp.feature_cache:
            self.use_feature_cache()
        self.ddp_model = self.forward_model
        if self.dist.world_size > 1:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.forward_model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        params = [p for p in self.model.parameters() if p.requires_grad]
        trainable = sum(p.numel() for p in params)
        log(self.dist, f"model: {hp.backbone}, head {hp.head or '[]'} -> {len(s.class_names)}, "
                       f"{trainable:,} trainable parameters, amp={self.amp}, device={self.device}")
        self.optimizer = make_optimizer(hp, params)
        steps = math.ceil(len(s.train) / (hp.batch_size * self.dist.world_size))
        self.steps_per_epoch = min(steps, hp.max_steps_per_epoch) if hp.max_steps_per_epoch else steps
        self.schedule = make_schedule(hp, self.optimizer, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(enabled=self.amp == torch.float16)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=hp.label_smoothing)
        self.checkpointer = Checkpointer(self.paths.checkpoints, self.dist.is_main)
        # before TensorBoard: smdebug needs protobuf's pure-Python implementation, chosen at first import
        self.debugger = debugger.create(hp, self.paths)
        self.debugger.attach(self.model, self.criterion)
        self.profiler = profiler.create(hp, self.paths, self.dist.local_rank == 0, {
            "batch_size": hp.batch_size, "num_workers": data.worker_count(hp.num_workers),
            "device": str(self.device), "world_size": self.dist.world_size, "steps_per_epoch": self.steps_per_epoch})
        self.tensorboard = None
        if self.dist.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(self.paths.tensorboard))
            except ImportError:
                log(self.dist, "tensorboard is not installed: no TensorBoard scalars")

    def use_feature_cache(self) -> None:
        """Swap the image datasets for cached backbone features (computing what is missing)."""
        hp = self.hp
        if hp.trainable_layers != 0:
            raise hyperparameters.HyperparameterError(
                "feature-cache needs trainable-layers 0 (a frozen backbone): features of a trained backbone change")
        cache = feature_cache.FeatureCache(
            Path(hp.feature_cache), feature_cache.cache_key(hp.backbone, self.frozen_digest, self.prep),
            log=lambda message: log(self.dist, message), writer=self.dist.is_main)
        computed = 0
        for name in ("train_set", "val_set", "test_set"):
            dataset, new = feature_cache.build(getattr(self, name).samples, self.model, self.prep, cache, self.device,
                                               hp.batch_size, data.worker_count(hp.num_workers), self.autocast,
                                               self.memory_format)
            setattr(self, name, dataset)
            computed += new
        log(self.dist, f"feature cache {cache.path}: {computed} images computed, "
                       f"{len(cache.entries) - computed} reused")
        self.forward_model, self.input_format = self.model.fc, torch.contiguous_format

    def trainable_state(self) -> dict:
        """The model's state without the frozen stages: what checkpoints and best_state keep."""
        return {k: v for k, v in self.model.state_dict().items() if k not in self.frozen_keys}

    def autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    # -- one pass ---------------------------------------------------------
    def run_epoch(self, epoch: int, state: TrainingState) -> tuple[float, float, float, int] | None:
        """Train epoch `epoch` from batch `state.step` on (a resumed job: the rest of it): its
        (loss, accuracy, images/s, images) over all ranks.

        None when a stop was requested part-way; `state` then holds where, and the sums so far."""
        set_train_mode(self.model, self.frozen)
        self.debugger.train()
        first = state.step
        if hasattr(self.train_set, "set_epoch"):  # augmentation seeds (cached features have none)
            self.train_set.set_epoch(epoch)
        batches = loader(self.train_set, self.hp, self.dist, train=True, epoch=epoch, first_batch=first)
        torch.manual_seed(self.hp.seed + epoch)  # dropout's stream per epoch
        batches = iter(batches)  # draws the loader's base seed from that stream
        if first:  # go on with the streams as the stopped job left them
            set_rng_state(state.rng[self.dist.rank], self.device)
        # rank 0 carries the stopped part's sums (already over all ranks); the epoch's all_sum adds the rest
        loss_sum, correct, seen = state.partial[:3] if self.dist.is_main else (0.0, 0.0, 0.0)
        start = time.perf_counter() - state.partial[3]
        unreadable = 0
        for step, (images, labels, bad) in enumerate(self.profiler.timed(batches, epoch, first), start=first):
            if step >= self.steps_per_epoch:
                break
            self.skips.add("train", self.train_set, bad)
            unreadable += len(bad)
            if images is not None:
                images = images.to(self.device, non_blocking=True, memory_format=self.input_format)
                labels = labels.to(self.device, non_blocking=True)
                with self.autocast():
                    logits = self.ddp_model(images)
                loss = self.criterion(logits.float(), labels)
                if not torch.isfinite(loss):
                    raise runtime.TrainingFailure(
                        f"loss became {loss.item()} at epoch {epoch} step {step}: lower the learning rate "
                        f"(lr={self.hp.lr}) or add warm-up")
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                lr = self.optimizer.param_groups[0]["lr"]
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.schedule.step()
                state.global_step += 1
                self.profiler.note(global_step=state.global_step, lr=lr)
                if self.tensorboard:
                    self.tensorboard.add_scalar("train/learning_rate", lr, state.global_step)
                n = labels.numel()
                loss_sum += loss.item() * n
                correct += (logits.argmax(1) == labels).sum().item()
                seen += n
            self.stop.step_done(state.global_step, self.dist.is_main)
            if self.stop.agreed(self.device):
                state.step = step + 1
                state.partial = [*runtime.all_sum([loss_sum, correct, seen], self.device), time.perf_counter() - start]
                state.rng = runtime.all_gather(rng_state(self.device))
                return None
        if self.dist.world_size > 1:  # every rank's share, in its own host's log
            print(f"{self.rank_label()} epoch {epoch}: trained on {int(seen)} images, "
                  f"skipped {unreadable} unreadable", flush=True)
        # global: every rank's sums; the speed over the slowest rank's time
        elapsed = runtime.all_max(time.perf_counter() - start, self.device)
        loss_sum, correct, seen = runtime.all_sum([loss_sum, correct, seen], self.device)
        return loss_sum / max(seen, 1), correct / max(seen, 1), seen / max(elapsed, 1e-9), int(seen)

    def rank_label(self) -> str:
        return f"[rank {self.dist.rank}/{self.dist.world_size} on {runtime.hosts()[1]}]"

    def merge_skips(self) -> None:
        """Every rank's unreadable images, on every rank: what checkpoints and the report keep."""
        if self.dist.world_size > 1:
            self.skips.paths = runtime.union_over_ranks(self.skips.paths)

    @torch.no_grad()
    def evaluate(self, dataset, split: str, final: bool = False) -> tuple[float, float, np.ndarray]:
        self.model.eval()
        (self.debugger.predict if final else self.debugger.eval)()
        n_classes = len(self.splits.class_names)
        confusion = torch.zeros(n_classes * n_classes, dtype=torch.float64, device=self.device)
        loss_sum = torch.zeros(1, dtype=torch.float64, device=self.device)
        unreadable = 0
        for images, labels, bad in loader(dataset, self.hp, self.dist, train=False):
            self.skips.add(split, dataset, bad)
            unreadable += len(bad)
            if images is None:
                continue
            images = images.to(self.device, non_blocking=True, memory_format=self.input_format)
            labels = labels.to(self.device, non_blocking=True)
            with self.autocast():
                logits = self.forward_model(images)
            self.debugger.eval_loss(logits, labels)
            loss_sum += nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
            confusion += torch.bincount(labels * n_classes + logits.argmax(1), minlength=n_classes ** 2)
        if dist.is_initialized():
            print(f"{self.rank_label()} {split}: scored {int(confusion.sum().item())} images, "
                  f"skipped {unreadable} unreadable", flush=True)
            dist.all_reduce(confusion)
            dist.all_reduce(loss_sum)
        matrix = confusion.view(n_classes, n_classes).cpu().numpy()
        total = matrix.sum()
        return float(loss_sum.item() / max(total, 1)), float(np.trace(matrix) / max(total, 1)), matrix

    # -- the job ----------------------------------------------------------
    def fit(self) -> bool:
        """Train to the end (True) or until SIGTERM (False, after a checkpoint)."""
        hp, state = self.hp, self.checkpointer.restore(self)
        for epoch in range(state.epoch + 1, hp.epochs + 1):
            result = self.run_epoch(epoch, state)
            if result is None:
                self.merge_skips()
                self.checkpointer.save(self, state)
                log(self.dist, f"stopped in epoch {epoch} after step {state.step}: checkpoint saved "
                               f"{self.stop.seconds_since_signal():.2f} s after SIGTERM, a restart resumes from it")
                return False
            state.step, state.partial, state.rng = 0, [0.0, 0.0, 0.0, 0.0], None
            train_loss, train_acc, speed, train_images = result
            log(self.dist, metrics.format_line("train", train_loss, train_acc, epoch, images_per_sec=speed))
            val_loss, val_acc, _ = self.evaluate(self.val_set, "validation")
            log(self.dist, metrics.format_line("validation", val_loss, val_acc, epoch))
            for name, value in (("train_loss", train_loss), ("validation_loss", val_loss),
                                ("validation_accuracy", val_acc)):
                self.debugger.save_scalar(name, value)
            if self.tensorboard:
                for name, value in (("train/loss", train_loss), ("train/accuracy", train_acc),
                                    ("validation/loss", val_loss), ("validation/accuracy", val_acc)):
                    self.tensorboard.add_scalar(name, value, epoch)
            state.epoch = epoch
            state.history.append({"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
                                  "train_images": train_images,
                                  "validation_loss": val_loss, "validation_accuracy": val_acc})
            if val_loss < state.best_loss:
                state.best_loss, state.best_epoch = val_loss, epoch
                state.best_state = copy.deepcopy({k: v.cpu() for k, v in self.trainable_state().items()})
            self.merge_skips()
            self.checkpointer.save(self, state)
            if hp.patience and epoch - state.best_epoch >= hp.patience:
                log(self.dist, f"early stop: validation loss has not improved for {hp.patience} epochs "
                               f"(best {state.best_loss:.6f} at epoch {state.best_epoch})")
                break
            if self.stop.agreed(self.device):
                log(self.dist, f"stopped after epoch {epoch}; checkpoint saved, a restart resumes from it")
                return False
        self.finish(state)
        return True

    def finish(self, state) -> None:
        if state.best_state is not None:
            self.model.load_state_dict(state.best_state, strict=False)  # the frozen part never changed
            log(self.dist, f"using the weights of epoch {state.best_epoch} (lowest validation loss {state.best_loss:.6f})")
        split, dataset = ("test", self.test_set) if len(self.test_set) else ("validation", self.val_set)
        loss, acc, confusion = self.evaluate(dataset, split, final=True)
        if split == "test":
            log(self.dist, metrics.format_line("test", loss, acc))
        self.merge_skips()
        if self.skips.total:
            log(self.dist, f"skipped {self.skips.total} unreadable image(s): "
                           + ", ".join(p for paths in self.skips.summary().values() for p in paths[:5]))
        if not self.dist.is_main:
            return
        report.write(report.build(split, confusion, self.splits.class_names, loss, self.skips.summary()),
                     self.paths.output_data)
        artifact.save(self.paths.model, self.model.state_dict(), self.arch, self.prep, self.splits.class_names,
                      training=TrainingSummary(dict(vars(self.hp)), state.best_epoch, state.history, split,
                                               acc, loss, self.skips.total, self.dist.world_size,
                                               runtime.hosts()[0]))
        # int8 serving calibrates on these, every precision is checked on them (server/precision.py)
        artifact.write_calibration(self.paths.model, [path for path, _ in spread(self.splits.train, 64)], self.prep)
        log(self.dist, f"model written to {self.paths.model}; evaluation report in {self.paths.output_data}")

    def close(self) -> None:
        """Also after a failure or a stop: the debugger's end-of-job marker lets rules run on what was
        written; TensorBoard's last scalars are flushed."""
        self.debugger.close()
        self.profiler.close()
        if self.tensorboard:
            self.tensorboard.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    paths = runtime.Paths.from_env()
    dist_info, trainer = runtime.Distributed(), None
    try:
        hp = hyperparameters.parse(argv)
        runtime.relaunch_under_torchrun(hp.processes_per_host, argv)
        dist_info, device = runtime.init_distributed()
        trainer = Trainer(hp, paths, dist_info, device)
        trainer.setup()
        trainer.fit()
        runtime.wait_for_all_ranks()
        return 0
    except (hyperparameters.HyperparameterError, data.DataError, weights.WeightsError,
            runtime.TrainingFailure, artifact.ArtifactError) as exc:
        if dist_info.local_rank == 0:  # each host's first process: every host has its own /opt/ml/output
            runtime.write_failure(paths, str(exc))
        return 1
    except Exception as exc:  # unexpected: keep the traceback in the log, the reason in the file
        import traceback

        traceback.print_exc()
        if dist_info.local_rank == 0:
            runtime.write_failure(paths, f"{type(exc).__name__}: {exc}")
        return 1
    finally:
        if trainer is not None:
            trainer.close()
        if dist.is_initialized():
            dist.destroy_process_group()


def run_and_exit(argv: list[str] | None = None):
    """main(argv), then exit with its status: what the trainer's entry scripts call."""
    runtime.exit_process(main(argv))


if __name__ == "__main__":
    run_and_exit()
