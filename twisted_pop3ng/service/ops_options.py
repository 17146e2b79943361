"""``twistd pop3ng``'s ops options: declared here, checked in :func:`post_options`, started by
:func:`add_services` (called by :mod:`.build`).
"""

from __future__ import annotations

from typing import Any, List

OPT_FLAGS: List[List[Any]] = []
OPT_PARAMETERS: List[List[Any]] = []


def post_options(options: Any) -> None:
    """Check and convert this module's options (raise ``usage.UsageError``)."""


def add_services(options: Any, factory: Any, parent: Any) -> None:
    """Start this module's services under ``parent`` (a MultiService) for the POP3 ``factory``."""
