"""The scheduler's step thread: while steps are large, one after another, each handed to the
engine thread to give out while the next one runs.

    stepper = Stepper(engine, wake, halted)   # wake: the engine thread's Event; halted(): stop stepping
    stepper.start()
    stepper.begin()        # after a large step on the engine thread: a run of steps starts here
    stepper.running        # a run is going on (the engine thread must not step meanwhile)
    stepper.ready          # a step is waiting to be taken
    made, seconds = stepper.take()   # the oldest; a step that raised raises here
    stepper.close()

A step's characters reach the engine thread when the next step's backend call begins
(Engine.on_backend_call), once that step's plan is made: handing them out would otherwise hold
the GIL while the plan is made and the lanes start. A run ends at a small step (the hand-over
between threads would cost more than it saves), when the engine has no work, or when halted().
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable

from ..engine import Engine, step_once

OVERLAP_CHARS = 256  # characters in a step after which the next one runs while they are handed out
AHEAD = 2  # steps made before the engine thread has taken the first of them
# Handing out a step's characters holds the GIL for a millisecond or more, and they arrive as the
# next step's lanes start, which need it too. A step of OVERLAP_CHARS or more takes tens of
# milliseconds, so the engine thread waiting this long first costs nothing.
LANES_START_SECONDS = 0.001


class Stepper:
    def __init__(self, engine: Engine, wake: threading.Event, halted: Callable[[], bool]):
        self.engine, self._wake, self._halted = engine, wake, halted
        self.thread = threading.Thread(target=self._loop, name="charrnn-step", daemon=True)
        self._made: deque = deque()  # (result, seconds) or (None, exception), not yet taken
        self._room = threading.Semaphore(AHEAD)
        self._go = threading.Event()
        self._held = None  # the last step, until the next one's backend call begins
        self._closed = False
        self.running = False

    def start(self) -> None:
        self.thread.start()

    def begin(self) -> None:
        self.running = True
        self._go.set()

    @property
    def ready(self) -> bool:
        return bool(self._made)

    def take(self):
        """The oldest step made here: ((rids, tokens, endings), seconds); its error raised here."""
        if self.running:  # the next step's lanes are starting: let them have the GIL first
            time.sleep(LANES_START_SECONDS)
        made, extra = self._made.popleft()
        self._room.release()
        if made is None:
            raise extra
        return made, extra

    def close(self, timeout: float) -> None:
        self._closed = True
        self._go.set()
        self._room.release()
        self.thread.join(timeout)

    def _loop(self) -> None:
        while not self._closed:
            self._go.wait()
            self._go.clear()
            if not self._closed:
                self._run()

    def _run(self) -> None:
        """Steps one after another while they are large, the engine has work and nothing halts it."""
        self.engine.on_backend_call = self._hand_over
        try:
            while True:
                self._room.acquire()
                if self._closed or self._halted() or not self.engine.has_work():
                    self._room.release()
                    return
                try:
                    made = timed_step(self.engine)
                except Exception as e:  # noqa: BLE001 - raised on the engine thread, as its pass's error
                    self._hand_over()
                    self._made.append((None, e))
                    return
                self._hand_over()  # the step had no backend call (every request had ended)
                self._held = made
                if len(made[0][0]) < OVERLAP_CHARS:
                    return
        finally:
            self.engine.on_backend_call = None
            self._hand_over()
            self.running = False
            self._wake.set()

    def _hand_over(self) -> None:
        if self._held is not None:
            self._made.append(self._held)
            self._held = None
            self._wake.set()


def timed_step(engine: Engine):
    """step_once, with its duration for the metrics."""
    began = time.perf_counter()
    made = step_once(engine)
    return made, time.perf_counter() - began
