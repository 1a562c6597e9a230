"""SageMaker Debugger (smdebug) hook for the trainer.

Where the hook comes from, in order:
  * SageMaker's DebuggerHookConfig: /opt/ml/input/config/debughookconfig.json
    (or SMDEBUG_CONFIG_FILE_PATH), read with Hook.create_from_json_file;
  * the `debugger` hyperparameter: collections from `debugger-collections`
    (`losses,weights:100` = weights every 100 steps), written to `debugger-dir`
    (default /opt/ml/output/tensors, where SageMaker's config puts them too).
Otherwise `create` returns NullDebugger: smdebug is not even imported.

smdebug is a passenger: any error it raises, at creation or inside its
forward/backward hooks, is logged once and switches it off; training goes on.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from pathlib import Path

import torch
from torch import nn

CONFIG_ENV = "SMDEBUG_CONFIG_FILE_PATH"
# Collections smdebug has no built-in regex for, as AWS's rule configs define them.
EXTRA_COLLECTIONS = {"relu_input": ".*relu_input", "relu_output": ".*relu_output"}


class NullDebugger:
    """No debugger configured: every call is a no-op."""

    enabled = False

    def attach(self, model: nn.Module, criterion: nn.Module) -> None: ...
    def train(self) -> None: ...
    def eval(self) -> None: ...
    def predict(self) -> None: ...
    def eval_loss(self, logits, labels) -> None: ...
    def save_scalar(self, name: str, value: float) -> None: ...
    def close(self) -> None: ...


class Debugger(NullDebugger):
    enabled = True

    def __init__(self, hook, out_dir: str, source: str):
        from smdebug import modes

        self.hook, self.out_dir, self.source, self.modes = hook, out_dir, source, modes
        self.failed = False
        # smdebug converts tensors with .numpy(), which has no bfloat16 (CPU autocast)
        hook._make_numpy_array = _to_numpy
        # Its forward/backward hooks run inside our forward pass: guard them, so a
        # debugger error switches the debugger off instead of failing the step.
        for name in ("forward_pre_hook", "forward_hook", "fhook"):
            setattr(hook, name, self._guard(getattr(hook, name)))
        make_backward = hook.backward_hook
        hook.backward_hook = lambda tname: self._guard(make_backward(tname))
        print(f"debugger: smdebug hook from {source}, writing to {out_dir}", flush=True)

    def _guard(self, fn):
        def guarded(*args, **kwargs):
            if self.failed:
                return None
            try:
                return fn(*args, **kwargs)
            except Exception:
                self._fail()
                return None

        return guarded

    def _fail(self) -> None:
        self.failed = True
        print(
            "debugger: smdebug failed and is switched off; training continues:\n" + traceback.format_exc(),
            file=sys.stderr,
            flush=True,
        )

    def _call(self, fn, *args) -> None:
        if self.failed:
            return
        try:
            fn(*args)
        except Exception:
            self._fail()

    def attach(self, model, criterion) -> None:
        probe = "layer1.0.relu_input_0"  # a tensor name the collections may select
        wants_relu_inputs = self.hook.save_all or any(
            re.match(regex, probe)
            for name in self.hook.include_collections
            for regex in self.hook.get_collection(name).include_regex
        )
        if wants_relu_inputs:
            # An in-place ReLU overwrites its input before smdebug's forward hook
            # reads it: relu_input would hold the output.
            for module in model.modules():
                if isinstance(module, nn.ReLU):
                    module.inplace = False
        self.eval_criterion = nn.CrossEntropyLoss()
        self._call(self.hook.register_module, model)
        self._call(self.hook.register_loss, criterion)
        # validation loss per step under the same tensor name as training's
        self._call(self.hook.register_loss, self.eval_criterion)

    def train(self) -> None:
        self._call(self.hook.set_mode, self.modes.TRAIN)

    def eval(self) -> None:
        self._call(self.hook.set_mode, self.modes.EVAL)

    def predict(self) -> None:  # final test scoring: kept apart from validation
        self._call(self.hook.set_mode, self.modes.PREDICT)

    def eval_loss(self, logits, labels) -> None:
        if not self.failed:
            self._call(self.eval_criterion, logits.float(), labels)

    def save_scalar(self, name, value) -> None:
        self._call(self.hook.save_scalar, name, float(value))
        # smdebug writes cached scalars when it closes the files of a step it saves; after a step it
        # does not save they would wait for a later one, where the next epoch's values overwrite
        # them. Written now, every epoch's value stays (LossNotDecreasing falls back on them).
        self._call(self.hook._write_scalars)

    def close(self) -> None:
        # writes the end-of-job marker: rules and trials stop waiting for more steps
        self._call(self.hook.close)


def _to_numpy(value):
    import numpy as np

    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.dtype == torch.bfloat16:
            value = value.float()
        return value.cpu().numpy()
    return np.asarray(value)


def config_file(paths) -> Path | None:
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    path = paths.root / "input" / "config" / "debughookconfig.json"
    return path if path.is_file() else None


def _import_smdebug():
    # smdebug's generated protobuf code predates protobuf 4: it needs the pure-Python
    # implementation, chosen when protobuf is first imported (the image sets it too).
    if "google.protobuf" not in sys.modules:
        os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
    os.environ.setdefault("SMDEBUG_LOG_LEVEL", "warning")  # it logs every parameter at INFO
    import smdebug.pytorch as smd

    return smd


def _local_hook(smd, hp, out_dir: str):
    collections = [(name, interval) for name, _, interval in (item.partition(":") for item in hp.debugger_collections)]
    hook = smd.Hook(
        out_dir=out_dir,
        save_config=smd.SaveConfig(save_interval=hp.debugger_save_interval),
        include_collections=[name for name, _ in collections],
    )
    for name, interval in collections:
        collection = hook.get_collection(name)
        if name in EXTRA_COLLECTIONS:
            collection.include(EXTRA_COLLECTIONS[name])
        if interval:
            collection.save_config = smd.SaveConfig(save_interval=int(interval))
    return hook


def create(hp, paths) -> NullDebugger:
    """The hook SageMaker or the hyperparameters ask for; NullDebugger when none is asked for."""
    config = config_file(paths)
    if config is None and not hp.debugger:
        return NullDebugger()
    try:
        smd = _import_smdebug()
        if config is not None:
            hook = smd.Hook.create_from_json_file(str(config))
            return Debugger(hook, hook.out_dir, str(config))
        out_dir = hp.debugger_dir or str(paths.output / "tensors")
        return Debugger(_local_hook(smd, hp, out_dir), out_dir, "hyperparameters")
    except Exception:
        print(
            "debugger: could not create the smdebug hook; training continues without it:\n" + traceback.format_exc(),
            file=sys.stderr,
            flush=True,
        )
        return NullDebugger()
