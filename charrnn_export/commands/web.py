"""`charrnn-export to-web`: flags -> build_site -> (optionally) serve. Results on stdout, the
server's lines on stderr."""

from __future__ import annotations

import sys

from ..errors import ConfigError
from ..web.build import ORT_VERSION, build_site
from ..web.serve import DEFAULT_PORT, bind, serve_site


def add_web_parser(sub) -> None:
    p = sub.add_parser("to-web", help="write a static web page that generates text in the browser",
                       description="Write a static site (index.html, the JavaScript API charrnn.js, a Web Worker, "
                       f"the model and its vocabulary) that runs the model with onnxruntime-web {ORT_VERSION}.")
    p.add_argument("--model", default="fp32", metavar="int8|fp32|PATH",
                   help="the shipped fp32 or int8 model, an exported .onnx file or an export directory "
                   "(default %(default)s)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder to write: new, empty, or an earlier to-web site (whose files are replaced)")
    p.add_argument("--ort-web", default=None, metavar="DIR",
                   help="copy onnxruntime-web from this folder (e.g. node_modules/onnxruntime-web/dist) so the "
                   f"site works offline; it must be version {ORT_VERSION} (default: load it from a CDN, "
                   "checked by subresource-integrity hashes)")
    p.add_argument("--serve", action="store_true",
                   help="then serve the site on 127.0.0.1 with the COOP/COEP headers that allow threads")
    p.add_argument("--port", type=int, default=None,
                   help=f"with --serve (default {DEFAULT_PORT}; 0: any free port)")
    p.set_defaults(func=run_web)


def run_web(args) -> int:
    if args.port is not None and not args.serve:
        raise ConfigError("--port is for --serve; add --serve (or drop --port)")
    port = DEFAULT_PORT if args.port is None else args.port
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {port}")  # before the build, not after
    # The port first: taken or not allowed, that is one line before the site is built.
    server = bind(args.out, port) if args.serve else None
    try:
        summary = build_site(args.model, args.out, ort_web=args.ort_web)
    except BaseException:
        if server is not None:
            server.server_close()
        raise
    print(f"wrote {summary['out']}: {summary['model']}, {summary['ort']}")
    sys.stdout.flush()
    if server is not None:
        serve_site(server, args.out, log=lambda line: print(line, file=sys.stderr, flush=True))
    return 0
