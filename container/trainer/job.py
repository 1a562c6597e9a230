"""Transfer-learning trainer: the program the sagemaker-training toolkit runs.

    toolkit_entry_point.py --lr 0.001 --batch-size 64 --epochs 5 ...   (see hyperparameters.py)

One loop in the style of torchvision's reference script: build data, model
and optimiser (setup.py); per epoch train, validate, report, checkpoint
(loop.py, reporting.py, checkpoint.py); at the end restore the best epoch
(lowest validation loss), score the test set once, and write the model
artifact (contract/artifact.py) and the evaluation report (insights/report.py).
"""

from __future__ import annotations

import copy
import math
import signal
import sys
import time

import torch.distributed as dist

from contract import artifact
from contract.spec import hyperparameters
from contract.spec.artifact import TrainingSummary
from trainer import data, distributed, runtime, setup, weights
from trainer.checkpoint import Checkpointer, RunningTotals, TrainingState, rng_state
from trainer.heldout import spread
from trainer.loop import Loop, evaluate, train_one_epoch
from trainer.reporting import printable

# a rank whose peer's exit broke its collective waits this long before writing a reason: the first
# failure's rank writes its own (O_EXCL keeps the first), not this consequence
PEER_REASON_WAIT_S = 3.0


def run(hp, paths: runtime.Paths, dist_info: distributed.Distributed, device) -> bool:
    """Train to the end (True) or until SIGTERM (False, after a checkpoint)."""
    sets, loop = setup.build(hp, paths, dist_info, device)
    log = loop.reporter.log
    try:
        checkpointer = Checkpointer(paths.checkpoints, dist_info.is_main)
        state = checkpointer.restore(loop)
        for epoch in range(state.epoch + 1, hp.epochs + 1):
            # here, not after the epoch: a job stopped in finish() restarts from the early stop's checkpoint
            if hp.patience and state.epoch - state.best_epoch >= hp.patience:
                log(
                    f"early stop: validation loss has not improved for {hp.patience} epochs "
                    f"(best {state.best_loss:.6f} at epoch {state.best_epoch})"
                )
                break
            result = train_one_epoch(loop, sets.train, epoch, state)
            if result is None:  # SIGTERM part-way: save where, and the sums so far
                loop.merge_skips()
                checkpointer.save(loop, state)
                log(
                    f"stopped in epoch {epoch} after step {state.step}: checkpoint saved "
                    f"{loop.stop.seconds_since_signal():.2f} s after SIGTERM, a restart resumes from it"
                )
                return False
            scored = evaluate(loop, sets.validation, "validation")
            if scored is None:  # SIGTERM in validation: the epoch's training is done, a restart redoes the rest
                state.step, state.partial = loop.steps_per_epoch, result.partial
                state.rng = distributed.all_gather(rng_state(device))
                loop.merge_skips()
                checkpointer.save(loop, state)
                log(
                    f"stopped in epoch {epoch}'s validation: checkpoint saved "
                    f"{loop.stop.seconds_since_signal():.2f} s after SIGTERM, a restart redoes the validation"
                )
                return False
            state.step, state.partial, state.rng = 0, RunningTotals(), None
            val_loss, val_acc, confusion = scored
            reason = nothing_learnt(epoch, result.images, int(confusion.sum()), len(sets.validation), val_loss)
            if reason:  # every rank's counts: all ranks stop here together
                loop.merge_skips()
                log_skipped(loop)
                raise runtime.TrainingFailure(reason)
            loop.reporter.report_epoch(epoch, result, val_loss, val_acc)
            state.epoch = epoch
            state.history.append(
                {
                    "epoch": epoch,
                    "train_loss": result.loss,
                    "train_accuracy": result.accuracy,
                    "train_images": result.images,
                    "validation_loss": val_loss,
                    "validation_accuracy": val_acc,
                }
            )
            if val_loss < state.best_loss:
                state.best_loss, state.best_epoch = val_loss, epoch
                state.best_state = copy.deepcopy({k: v.cpu() for k, v in loop.trainable_state().items()})
            loop.merge_skips()
            checkpointer.save(loop, state)
            if loop.stop.agreed(device):
                log(f"stopped after epoch {epoch}; checkpoint saved, a restart resumes from it")
                return False
        return finish(loop, sets, state, paths)
    finally:
        close(loop, paths)


def nothing_learnt(epoch: int, trained: int, scored: int, validation_images: int, val_loss: float) -> str | None:
    """Why an epoch leaves nothing to keep: it read no image, or scored nothing it can compare. Without
    this, a channel of unreadable files (git-LFS pointers, HEIC named .jpg) trained on nothing, scored loss
    0.0 (0 < inf: the best epoch), and the untrained model was written by a job that succeeded; a diverged
    one's nan loss never beat inf, and its nan weights were written too."""
    if not trained:
        return f"epoch {epoch} trained on no image: every training image was unreadable (the log names some)"
    if validation_images and not scored:
        return f"epoch {epoch} scored no validation image: all {validation_images} were unreadable (the log names some)"
    if not math.isfinite(val_loss):
        return f"validation loss is {val_loss} at epoch {epoch}: the model diverged; lower the learning rate"
    return None


def log_skipped(loop: Loop) -> None:
    """The unreadable images every rank met, a few per split, in the log."""
    if loop.skips.total:
        loop.reporter.log(
            f"skipped {loop.skips.total} unreadable image(s): "
            + ", ".join(printable(p) for paths in loop.skips.summary().values() for p in paths[:5])
        )


def finish(loop: Loop, sets: setup.Datasets, state: TrainingState, paths: runtime.Paths) -> bool:
    """The best epoch's weights, scored once on the test set (or validation without one); the artifact and
    the report. False when SIGTERM came first: the last epoch's checkpoint stays, a restart redoes this."""
    log = loop.reporter.log
    if state.best_state is not None:
        loop.model.load_state_dict(state.best_state, strict=False)  # the frozen part never changed
        log(f"using the weights of epoch {state.best_epoch} (lowest validation loss {state.best_loss:.6f})")
    split, dataset = ("test", sets.test) if len(sets.test) else ("validation", sets.validation)
    scored = evaluate(loop, dataset, split, final=True)
    if scored is None or loop.stop.agreed(loop.device):  # before the report and the artifact are written
        log(
            f"stopped while scoring the {split} set, {loop.stop.seconds_since_signal():.2f} s after SIGTERM; "
            "the checkpoint of the last epoch stays, a restart scores and writes the model"
        )
        return False
    loss, acc, confusion = scored
    if split == "test":
        loop.reporter.report_test(loss, acc)
    loop.merge_skips()
    log_skipped(loop)
    if not loop.dist.is_main:
        return True
    # Deferred: the report draws with matplotlib; the loop hands it plain numbers, and importing the
    # trainer (a pre-started tuning trial does) loads neither matplotlib nor the insights package.
    from insights import report

    report.write(report.build(split, confusion, loop.class_names, loss, loop.skips.summary()), paths.output_data)
    artifact.save(
        paths.model,
        loop.model.state_dict(),
        loop.arch,
        sets.prep,
        loop.class_names,
        training=TrainingSummary(
            loop.hp.as_dict(),
            state.best_epoch,
            state.history,
            split,
            acc,
            loss,
            loop.skips.total,
            loop.dist.world_size,
            distributed.hosts()[0],
        ),
        # int8 serving calibrates on these, every precision is checked on them (server/precision.py)
        calibration_images=[path for path, _ in spread(sets.splits.train, 64)],
    )
    log(f"model written to {paths.model}; evaluation report in {paths.output_data}")
    loop.reporter.report_final(split, loss, acc, paths)
    return True


def close(loop: Loop, paths: runtime.Paths) -> None:
    """Also after a failure or a stop: the debugger's end-of-job marker lets rules run on what was
    written; TensorBoard's last scalars are flushed."""
    loop.debugger.close()
    loop.profiler.close()
    loop.reporter.close(paths)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    paths = runtime.Paths.from_env()
    dist_info = distributed.Distributed()
    hp = None
    if not distributed.under_torchrun():  # torchrun's workers are this process's children
        runtime.clear_failure(paths)
    try:
        hp = hyperparameters.parse(argv)
        distributed.relaunch_under_torchrun(hp.processes_per_host, argv)
        dist_info, device = distributed.init_distributed(hp.collective_timeout)
        run(hp, paths, dist_info, device)
        distributed.wait_for_all_ranks()
        return 0
    except (
        hyperparameters.HyperparameterError,
        data.DataError,
        weights.WeightsError,
        runtime.TrainingFailure,
        artifact.ArtifactError,
        distributed.LaunchError,
    ) as exc:  # every rank writes: the first to fail is kept (a rank >= 1's reason too)
        runtime.write_failure(paths, str(exc))
        return 1
    except KeyboardInterrupt:  # Ctrl-C: no Exception, and no stop with a checkpoint either
        runtime.write_failure(paths, "interrupted by SIGINT")
        return 128 + signal.SIGINT
    except Exception as exc:  # unexpected: keep the traceback in the log, the reason in the file
        import traceback

        traceback.print_exc()
        reason = distributed.timeout_reason(exc, hp.collective_timeout) if hp else None
        if distributed.peer_lost(exc):  # let the rank that failed first write its reason first
            time.sleep(PEER_REASON_WAIT_S)
        runtime.write_failure(paths, reason or f"{type(exc).__name__}: {exc}")
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_and_exit(argv: list[str] | None = None):
    """main(argv), then exit with its status: what the trainer's entry scripts call."""
    runtime.exit_process(main(argv))


if __name__ == "__main__":
    run_and_exit()
