"""One loaded model behind the four handler stages.

Each stage is the default (handlers.py) unless model_dir/code/inference.py
defines a function of the same name, as with SageMaker's framework images.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from server.handlers import DEFAULT_TOP_K, JSON, DefaultHandlers, media_type, negotiate
from server.parsing import custom_attributes, whole_number
from server.settings import Settings
from server.user_code import ModelCode, load_shared

HANDLER_NAMES = ("model_fn", "input_fn", "predict_fn", "output_fn")
MAX_TOP_K = 999_999  # more than any model's classes: all of them
log = logging.getLogger(__name__)


def requested_top_k(attributes: str | None) -> int:
    """X-Amzn-SageMaker-Custom-Attributes' top_k (parsing.custom_attributes): every top_k pair must be
    a whole number, the last one counts; other pairs (a client's trace id, say) are not ours: ignored."""
    top_k = DEFAULT_TOP_K
    for key, value in custom_attributes(attributes):
        if key == "top_k":
            top_k = whole_number(value, "custom attribute top_k", 1, MAX_TOP_K)
    return top_k


class InferenceService:
    """Built in two steps around gunicorn's fork (preload.py):

    __init__ (in the master): user code imported and model_fn run, so every
        worker shares the weights' pages; on a GPU host a user's model_fn
        waits for the worker instead, since it may start CUDA, which does not
        survive a fork. No parallel work here (see preload.py).
    start_in_worker: the model on the worker's device, the batcher's thread
        started, and warm-up forward passes at the worker's thread count.
    Then `invoke` serves requests from many threads.
    """

    def __init__(self, model_dir, settings: Settings, code_tag: str | None = None):
        """code_tag: a multi-model worker's unique name for this load, which gets
        code/ a namespace of its own (user_code.ModelCode); None: SageMaker's way."""
        self.model_dir = str(model_dir)
        self.defaults = DefaultHandlers(model_dir, settings)
        self.code = None if code_tag is None else ModelCode(model_dir, code_tag)
        try:
            self._take_handlers(load_shared(model_dir) if self.code is None else self.code.module, settings)
        except BaseException:
            self.close()  # no model code left behind in sys.modules
            raise

    def _take_handlers(self, user, settings: Settings) -> None:
        self.overridden = [name for name in HANDLER_NAMES if callable(getattr(user, name, None))]
        if self.overridden:
            log.info("code/inference.py overrides %s", ", ".join(self.overridden))
        self.model_fn, self.input_fn, self.predict_fn, self.output_fn = (
            getattr(user if name in self.overridden else self.defaults, name) for name in HANDLER_NAMES
        )
        self.model_fn_in_worker = bool(settings.gpus) and "model_fn" in self.overridden
        # whatever model_fn returns (a user's may return any object); None until a GPU worker loads it
        self.model: Any = None if self.model_fn_in_worker else self.model_fn(self.model_dir)

    def start_in_worker(self) -> None:
        import torch

        if self.model_fn_in_worker:
            self.model = self.model_fn(self.model_dir)
        if "model_fn" not in self.overridden and torch.cuda.is_available():
            self.model = self.model.to("cuda")  # this worker's GPU (gunicorn_config.post_fork)
        if "predict_fn" not in self.overridden:
            self.defaults.bind(self.model)
        elif "model_fn" not in self.overridden:
            self.defaults.warm(self.model)

    def close(self) -> None:
        """Stop the batcher's thread and forget the model's code (a multi-model worker unloading it)."""
        if self.defaults.batcher:
            self.defaults.batcher.close()
        if self.code is not None:
            self.code.unload()

    def last_batch_size(self) -> int | None:
        """Images in the forward pass that served this thread's last request (default predict_fn only)."""
        return self.defaults.batcher.last_batch_size() if self.defaults.batcher else None

    def invoke(
        self, body: bytes, content_type: str | None, accept: str | None, custom_attributes: str | None
    ) -> tuple[bytes | str, str]:
        """-> (response body, its content type); RequestError for the client's mistakes."""
        top_k = requested_top_k(custom_attributes)
        if "output_fn" not in self.overridden:
            negotiate(accept)  # a 406 before the decode and forward pass that it would waste
        batcher = self.defaults.batcher
        with batcher.upcoming() if batcher else contextlib.nullcontext():
            data = self.input_fn(body, content_type)
            prediction = self.predict_fn(data, self.model)
        if "output_fn" not in self.overridden:
            return self.defaults.output_fn(prediction, accept, top_k)
        # The toolkit hands user code a concrete type and takes back either
        # the body alone (of that type) or (body, content type).
        accept = JSON if media_type(accept) in ("", "*/*") else accept
        result = self.output_fn(prediction, accept)
        return result if isinstance(result, tuple) else (result, accept)
