"""Where the loop's results go: the one place per optimizer step and per epoch.

`report_step` and `report_epoch` send each result to every consumer: the
metric lines SageMaker's regexes read (metrics.py, rank 0 only), TensorBoard
scalars (rank 0), the debugger's per-epoch scalars, the profiler's per-step
notes, and the tracker (tracking.py: scalars.jsonl, MLflow). A new consumer
is one more line in each.
"""

from __future__ import annotations

from contract.spec import metrics


def printable(text: str) -> str:
    """A name from the data (a file's, a folder's) fit for a log line: its control characters and `#`
    escaped. A file named "x\\n#metric ... validation loss=0.000001 ..." printed as it is made a line that
    SageMaker's metric regexes, and the tuners reading the log, took for the job's own; and the regexes are
    not anchored to a line's start, so its "#metric" must not show in the middle of one either."""
    return "".join(char if char.isprintable() and char != "#" else _escaped(char) for char in text)


def _escaped(char: str) -> str:
    return "\\x23" if char == "#" else ascii(char)[1:-1]  # ascii("\n") is "'\\n'"


def log(dist_info, message: str) -> None:
    """A line in the job's log, from rank 0 only."""
    if dist_info.is_main:
        print(message, flush=True)


class Reporter:
    def __init__(self, dist_info, tensorboard_dir=None, profiler=None, debugger=None, tracker=None):
        from trainer.debugger import NullDebugger
        from trainer.profiler import NullProfiler
        from trainer.tracking import NullTracker

        self.dist = dist_info
        self.tracker = tracker or NullTracker()
        self.profiler = profiler or NullProfiler()
        self.debugger = debugger or NullDebugger()
        self.tensorboard = None
        # Create after the debugger: smdebug needs protobuf's pure-Python implementation, chosen at first import
        if dist_info.is_main and tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(tensorboard_dir))
            except ImportError:
                self.log("tensorboard is not installed: no TensorBoard scalars")

    def log(self, message: str) -> None:
        log(self.dist, message)

    def report_step(self, global_step: int, lr: float, loss: float, epoch: int = 0) -> None:
        """After optimizer step `global_step` (from 1) of `epoch`, taken at learning rate `lr` on a batch with `loss`."""
        self.profiler.note(global_step=global_step, lr=lr)
        self.tracker.step(global_step, epoch, loss=loss, learning_rate=lr)
        if self.tensorboard:
            self.tensorboard.add_scalar("train/learning_rate", lr, global_step)
            self.tensorboard.add_scalar("train/step_loss", loss, global_step)

    def report_epoch(self, epoch: int, train, val_loss: float, val_accuracy: float) -> None:
        """After epoch `epoch` (from 1): `train` its loop.EpochResult, then the validation pass's results."""
        self.log(metrics.format_line("train", train.loss, train.accuracy, epoch, images_per_sec=train.images_per_sec))
        self.log(metrics.format_line("validation", val_loss, val_accuracy, epoch))
        self.tracker.epoch(
            epoch,
            train_loss=train.loss,
            train_accuracy=train.accuracy,
            train_images_per_sec=train.images_per_sec,
            validation_loss=val_loss,
            validation_accuracy=val_accuracy,
        )
        for name, value in (
            ("train_loss", train.loss),
            ("validation_loss", val_loss),
            ("validation_accuracy", val_accuracy),
        ):
            self.debugger.save_scalar(name, value)
        if self.tensorboard:
            for name, value in (
                ("train/loss", train.loss),
                ("train/accuracy", train.accuracy),
                ("validation/loss", val_loss),
                ("validation/accuracy", val_accuracy),
            ):
                self.tensorboard.add_scalar(name, value, epoch)

    def report_test(self, loss: float, accuracy: float) -> None:
        """The final scoring of the test set (the selected epoch's weights)."""
        self.log(metrics.format_line("test", loss, accuracy))

    def report_final(self, split: str, loss: float, accuracy: float, paths) -> None:
        """Once the artifact is written (rank 0): the tracker's end-of-run reports and artifacts."""
        self.tracker.final(split, loss, accuracy, paths)

    def close(self, paths=None) -> None:
        """After the profiler has closed (its report goes to the tracker too)."""
        if self.tensorboard:
            self.tensorboard.close()
        self.tracker.close(paths)
