"""ServeOptions: what a server is started with, the one home of its defaults (create_app's, the
Scheduler's and the `serve` command's flags all read these fields). Standard library only, so
that the command can build its flags without the serve extra installed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .schema import Limits


@dataclass
class ServeOptions:
    slots: int = 256
    queue: int = 1024  # choices that may wait for a slot; beyond: 429
    limits: Limits = field(default_factory=Limits)
    api_key: str | None = None
    flush_interval: float = 0.015  # seconds between a stream's events (at the least)
    # Events per second across every open stream: with many streams each event carries more
    # characters instead of more events competing with the engine thread for the CPU.
    max_event_rate: float = 500.0
    retry_after: int = 1  # seconds, in 429 answers
    request_timeout: float = 30.0  # seconds from a request's headers to the end of its body; beyond: 408
    on_load_failure: Callable[[Exception], None] | None = None  # the command stops the server
    # Each model's engine in a process of its own (remote.py; the command's default): the loaders
    # must then pickle (remote.ModelSpec). False: in this process, with any loader.
    engine_process: bool = False
