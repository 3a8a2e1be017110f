"""GET /metrics: the server's counters in Prometheus' text format (version 0.0.4).

    render(requests_by_status: {status: count}, models: {name: Scheduler or None}) -> str

Counters: requests by HTTP status (499: the client hung up), characters made, engine steps and
their time (a histogram), failed choices, and engine passes that raised.
Gauges: slots, busy slots and queued choices per model, and whether each model is loaded.
"""

from __future__ import annotations

from .scheduler import STEP_BUCKETS

PREFIX = "charrnn"


def render(requests_by_status: dict[int, int], models: dict) -> str:
    lines = [f"# HELP {PREFIX}_requests_total HTTP requests answered, by status code.",
             f"# TYPE {PREFIX}_requests_total counter"]
    lines += [f'{PREFIX}_requests_total{{status="{status}"}} {count}' for status, count in sorted(requests_by_status.items())]
    gauges = [("model_loaded", "gauge", "1 once the model is loaded and its engine runs.",
               lambda s: 1),
              ("slots", "gauge", "Engine slots (--slots).", lambda s: s.slots),
              ("busy_slots", "gauge", "Slots generating or reading a prompt now.", lambda s: s.busy),
              ("queue_depth", "gauge", "Choices accepted and waiting for a slot.", lambda s: s.queued),
              ("characters_total", "counter", "Characters generated.", lambda s: s.chars_made),
              ("steps_total", "counter", "Engine steps run.", lambda s: s.steps),
              ("failed_choices_total", "counter", "Choices whose generation failed (finish_reason error).",
               lambda s: s.failed_choices),
              ("engine_errors_total", "counter", "Passes of the engine thread that raised and ended the "
               "requests they held (a bug; the thread goes on).", lambda s: s.internal_errors)]
    for name, kind, help_text, value in gauges:
        lines += [f"# HELP {PREFIX}_{name} {help_text}", f"# TYPE {PREFIX}_{name} {kind}"]
        for model, scheduler in models.items():
            shown = 0 if scheduler is None else value(scheduler)
            lines.append(f'{PREFIX}_{name}{{model="{_label(model)}"}} {shown}')
    lines += [f"# HELP {PREFIX}_step_seconds Time of one engine step (every busy slot advanced by one character).",
              f"# TYPE {PREFIX}_step_seconds histogram"]
    for model, scheduler in models.items():
        if scheduler is None:
            continue
        label = _label(model)
        running = 0
        for bound, count in zip(STEP_BUCKETS, list(scheduler.step_buckets)):
            running += count
            lines.append(f'{PREFIX}_step_seconds_bucket{{model="{label}",le="{bound}"}} {running}')
        lines.append(f'{PREFIX}_step_seconds_bucket{{model="{label}",le="+Inf"}} {scheduler.steps}')
        lines.append(f'{PREFIX}_step_seconds_sum{{model="{label}"}} {scheduler.step_seconds:.6f}')
        lines.append(f'{PREFIX}_step_seconds_count{{model="{label}"}} {scheduler.steps}')
    return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
