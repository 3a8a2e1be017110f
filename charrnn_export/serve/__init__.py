"""`charrnn-export serve`: an OpenAI-compatible completions server over the decode engine.

    app.py        the FastAPI app: routes, auth, body limit, errors in OpenAI's shape, request log
    options.py    ServeOptions: the server's settings, and the `serve` command's defaults
    schema.py     request bodies -> checked Completion, or ApiError (OpenAI's error shape)
    scheduler.py  the engine thread: one Engine per model, continuous batching, stop strings
    responses.py  the event stream and the JSON answer, each cancelling its job on a disconnect
    metrics.py    /metrics in Prometheus' text format
    protocol.py   uvicorn's h11 connection with a deadline for request headers (408), errors in OpenAI's shape
    (the command line, flags, binding, loading, memory sizing, uvicorn and the drain, is
    charrnn_export/commands/serve.py)
    page.html     the page at /

Needs the `serve` extra (fastapi, uvicorn); nothing here is imported by `import charrnn_export`.
"""
