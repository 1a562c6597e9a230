"""Everything the loop needs, built once: data, model, optimiser, schedule and the hooks."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from contract.model import STAGES, Architecture, build_classifier
from contract.preprocess import Preprocessing
from contract.spec import hyperparameters
from contract.spec.hyperparameters import Hyperparameters
from trainer import data, debugger, distributed, feature_cache, lockstep, profiler, runtime, tracking, weights
from trainer.checkpoint import data_digest, frozen_keys, state_digest
from trainer.loop import Loop, autocast, set_train_mode
from trainer.optim import amp_dtype, make_optimizer, make_schedule
from trainer.reporting import Reporter
from trainer.reporting import log as log_line

# the images, or (feature cache) their backbone features
Dataset = data.ImageDataset | feature_cache.FeatureDataset


@dataclass
class Datasets:
    splits: data.Splits
    prep: Preprocessing
    train: Dataset
    validation: Dataset
    test: Dataset


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
            f"hyperparameter trainable-layers: at most {len(STAGES)} stages ({', '.join(STAGES)})"
        )
    frozen = [m for stage in STAGES[trainable_layers:] for m in model.stage_modules(stage)]
    for module in frozen:
        module.requires_grad_(False)
    return frozen


def load_datasets(hp: Hyperparameters, paths: runtime.Paths, log) -> Datasets:
    splits = data.discover(paths.scratch, hp.val_fraction, hp.seed)
    log(
        f"data: {len(splits.class_names)} classes, {len(splits.train)} training, "
        f"{len(splits.validation)} validation, {len(splits.test)} test images"
    )
    prep = Preprocessing.for_image_size(hp.image_size)
    # the feature cache needs one deterministic view of each image: no augmentation
    augment = hp.augment and not hp.feature_cache
    return Datasets(
        splits,
        prep,
        data.ImageDataset(splits.train, prep, train=augment, seed=hp.seed, crop_scale=hp.crop_scale),
        data.ImageDataset(splits.validation, prep, train=False),
        data.ImageDataset(splits.test, prep, train=False),
    )


def build_model(hp: Hyperparameters, n_classes: int, log) -> tuple[Architecture, nn.Module, list[nn.Module]]:
    """The classifier with its starting weights, and its frozen modules."""
    arch = Architecture(hp.backbone, n_classes, list(hp.head), hp.dropout)
    model = build_classifier(arch)
    source = weights.resolve(hp.pretrained, hp.backbone, data.channel_dir("pretrained"))
    if source is not None:
        weights.load_backbone(model, source)
        log(f"backbone {hp.backbone} initialised from {source.name}")
    elif hp.trainable_layers == 0:  # asked for explicitly (the default trains every stage then)
        log(
            "warning: pretrained none and trainable-layers 0: the head learns from a frozen, random backbone's features"
        )
    init_head(model.fc, hp.init)
    return arch, model, freeze(model, hp.trainable_layers)


def cached_features(
    hp: Hyperparameters,
    sets: Datasets,
    model: nn.Module,
    frozen_digest: str,
    dist_info: distributed.Distributed,
    device: torch.device,
    amp: torch.dtype | None,
    memory_format: torch.memory_format,
    log: Callable[[str], None],
) -> Datasets:
    """The datasets as cached backbone features (computing what is missing), for the loop to feed the head."""
    if hp.trainable_layers != 0:
        raise hyperparameters.HyperparameterError(
            "feature-cache needs trainable-layers 0 (a frozen backbone): features of a trained backbone change"
        )
    cache = feature_cache.FeatureCache(
        Path(hp.feature_cache),
        feature_cache.cache_key(hp.backbone, frozen_digest, sets.prep),
        log=log,
        writer=dist_info.is_main,
    )
    computed = 0

    def features(images: Dataset) -> feature_cache.FeatureDataset:
        nonlocal computed
        dataset, new = feature_cache.build(
            images.samples,
            model,
            sets.prep,
            cache,
            device,
            hp.batch_size,
            data.worker_count(hp.num_workers),
            functools.partial(autocast, device, amp),
            memory_format,
        )
        computed += new
        return dataset

    cached = replace(sets, train=features(sets.train), validation=features(sets.validation), test=features(sets.test))
    log(f"feature cache {cache.path}: {computed} images computed, {len(cache.entries) - computed} reused")
    return cached


def build(
    hp: Hyperparameters, paths: runtime.Paths, dist_info: distributed.Distributed, device: torch.device
) -> tuple[Datasets, Loop]:
    """The parts first, then the Loop once, complete."""

    def log(message: str) -> None:
        log_line(dist_info, message)

    torch.manual_seed(hp.seed)
    sets = load_datasets(hp, paths, log)
    class_names = sets.splits.class_names
    arch, model, frozen = build_model(hp, len(class_names), log)
    keys = frozen_keys(model, frozen)
    state = model.state_dict()
    # identifies the frozen weights (the checkpoint and the feature cache leave them out)
    frozen_digest = state_digest({k: state[k] for k in keys})
    memory_format = torch.channels_last if hp.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)  # type: ignore[call-overload]  # torch's stub lacks the keyword form
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(hp, params)
    steps = math.ceil(len(sets.splits.train) / (hp.batch_size * dist_info.world_size))
    steps_per_epoch = min(steps, hp.max_steps_per_epoch) if hp.max_steps_per_epoch else steps
    amp = amp_dtype(hp, device)
    # what the passes feed: the whole model, or (feature cache) its head over the cached features
    forward_model: nn.Module = model
    input_format = memory_format
    if hp.feature_cache:
        sets = cached_features(hp, sets, model, frozen_digest, dist_info, device, amp, memory_format, log)
        forward_model, input_format = model.fc, torch.contiguous_format
    min_images = fewest_images(hp, forward_model, frozen, sets.train, device)
    train_model: nn.Module = forward_model
    if dist_info.world_size > 1:
        train_model = nn.parallel.DistributedDataParallel(
            forward_model, device_ids=[device.index] if device.type == "cuda" else None
        )
    log(
        f"model: {hp.backbone}, head {hp.head or '[]'} -> {len(class_names)}, "
        f"{sum(p.numel() for p in params):,} trainable parameters, amp={amp}, device={device}"
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=hp.label_smoothing)
    # the debugger before TensorBoard (in the Reporter): smdebug needs protobuf's pure-Python implementation;
    # attached after the feature cache is computed, so that the hook records training passes only
    hook = debugger.create(hp, paths)
    hook.attach(model, criterion)
    steps_profiler = profiler.create(
        hp,
        paths,
        dist_info.local_rank == 0,
        {
            "batch_size": hp.batch_size,
            "num_workers": data.worker_count(hp.num_workers),
            "device": str(device),
            "world_size": dist_info.world_size,
            "steps_per_epoch": steps_per_epoch,
        },
    )
    reporter = Reporter(
        dist_info, paths.tensorboard, steps_profiler, hook, tracking.create(hp, paths, dist_info.is_main)
    )
    loop = Loop(
        hp=hp,
        dist=dist_info,
        device=device,
        model=model,
        frozen=frozen,
        forward_model=forward_model,
        train_model=train_model,
        criterion=criterion,
        optimizer=optimizer,
        schedule=make_schedule(hp, optimizer, steps_per_epoch),
        scaler=torch.amp.GradScaler(enabled=amp == torch.float16),
        steps_per_epoch=steps_per_epoch,
        class_names=class_names,
        reporter=reporter,
        amp=amp,
        input_format=input_format,
        debugger=hook,
        profiler=steps_profiler,
        frozen_keys=keys,
        frozen_digest=frozen_digest,
        data_digest=data_digest({name: getattr(sets.splits, name) for name in ("train", "validation", "test")}),
        arch=arch,
        min_batch_images=min_images,
    )
    return sets, loop


def fewest_images(hp: Hyperparameters, model: nn.Module, frozen: list[nn.Module], train: Dataset, device) -> int:
    """The smallest training batch the model trains on (lockstep.fewest_images); refuses batch-size 1 then."""
    set_train_mode(model, frozen)  # as training runs it: frozen BatchNorm in eval mode takes one image
    fewest = lockstep.fewest_images(model, lockstep.sample_shape(train), device)
    if fewest > hp.batch_size:
        raise hyperparameters.HyperparameterError(
            f"hyperparameter batch-size: {hp.batch_size} image(s) a batch, and BatchNorm cannot train on one at "
            f"image-size {hp.image_size} (its last stage sees one value per channel): use 2 or more"
        )
    return fewest
