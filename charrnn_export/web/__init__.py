"""The browser: `charrnn-export to-web` writes a static site that runs an exported model with
onnxruntime-web and samples it with the project's sampling rule ported to JavaScript.

    build.py     build_site(model, out, ort_web) -> the site folder
    serve.py     a 127.0.0.1 static server with the COOP/COEP headers (threads in WebAssembly)
    browser.py   headless Chromium for the tests and benchmarks/web.py
(the `to-web` command is charrnn_export/commands/web.py)
    static/      the page and the JavaScript (charrnn.js is the API; see its header)

Nothing heavy is imported here: the command imports onnxruntime only to check the model.
"""
