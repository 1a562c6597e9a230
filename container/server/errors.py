"""Errors that are the client's fault: answered with `status` and a JSON reason."""


class RequestError(ValueError):
    status = 400


class UnsupportedContentType(RequestError):
    status = 415


class UnsupportedAccept(RequestError):
    status = 406


class TooLarge(RequestError):
    """More images, or more pixels, than one request may hold."""

    status = 413


class Overloaded(RequestError):
    """Not the client's fault: the server is busy now, and the same request may succeed
    later (answered with Retry-After)."""

    status = 503
    retry_after_s = 1
