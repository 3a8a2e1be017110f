"""`charrnn-export sample` (and `python -m charrnn_export.sample`): generate text from a model.

    python -m charrnn_export.sample --model model.onnx --start "ROMEO: " --length 1000 --seed 1

Reads top to bottom: parse flags -> check them -> Generator.load -> generate or stream -> write.
The generated text (the start string, then the new characters) goes to stdout or --out; the
log goes to stderr, so `... > out.txt` gives clean text.

The onnx path must stay light: this module and everything it imports for `--runtime onnx` use
numpy, onnxruntime and the standard library only (tests/test_lightweight.py checks). The
savedmodel and keras runtimes import TensorFlow when they are loaded, not before, so a bad flag
is reported before TensorFlow is imported. For the same reason this module does not import
cli.py (which pulls in every subcommand's module), only commands/common.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from ..checks import UNKNOWN_MODES, check_count, check_fits_memory, check_length, check_seed, check_threads
from ..contract import DEVICES, RUNTIMES
from ..errors import ConfigError, WriteError
from ..files import atomic_write_text, check_writable_file
from ..generate import DEFAULTS, ONNX_FILE_RUNTIMES, SHIPPED, Generator
from ..rng import random_seed
from ..sampling import SamplingConfig
from .common import ERROR_PREFIX, Parser, run_guarded

SEPARATOR = "-" * 40  # between samples in text output
MAX_SAMPLES = 1_000_000  # --num-samples: rows of one batch; memory decides well below this for long texts
# Memory a sample costs while it is generated: the engine's row (state, logits, random numbers;
# generous for 1024 units) and, for each kept character, its slot in a list and the copies the
# output is made of (joined text, formatted output, its encoding: up to 4 bytes each).
ROW_BYTES = 64 * 1024
KEPT_CHAR_BYTES = 24
# The flag each sampling setting is given by, for the errors that name it.
SAMPLING_FLAGS = {"temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p", "greedy": "--greedy"}


# ---------------------------------------------------------------- flags

DESCRIPTION = ("Generate text: the start string, then --length characters sampled from the model one at a "
               "time. Text goes to stdout (or --out), the log to stderr.")


def add_sample_arguments(p: argparse.ArgumentParser) -> None:
    """The flags; every default is generate.SampleOptions' (DEFAULTS), the Python API's too."""
    d = DEFAULTS
    g = p.add_argument_group("model")
    g.add_argument("--runtime", choices=RUNTIMES, default=d.runtime,
                   help="onnx needs only onnxruntime; savedmodel and keras need TensorFlow (default %(default)s)")
    g.add_argument("--model", default=d.model, metavar="PATH",
                   help="onnx: a .onnx file or export directory, or 'fp32'/'int8' for the shipped models "
                   "(default: the shipped fp32 model); savedmodel: an export directory or its saved_model/; "
                   "keras: a run directory or checkpoint")
    g.add_argument("--vocab", default=d.vocab, metavar="FILE",
                   help="keras only: vocab.json for a checkpoint that holds no vocabulary")
    g = p.add_argument_group("start")
    g.add_argument("--start", default=d.start, metavar="TEXT",
                   help="text the model reads before it writes (default %(default)r)")
    g.add_argument("--unknown", choices=UNKNOWN_MODES, default=d.unknown,
                   help="start characters outside the model's vocabulary: fail listing them, or drop them "
                   "(default %(default)s)")
    g = p.add_argument_group("sampling")
    g.add_argument("--length", type=int, default=d.length, metavar="N",
                   help="characters to generate (default %(default)s)")
    g.add_argument("--temperature", type=float, default=d.temperature, metavar="T",
                   help="> 0; lower is more predictable, higher more varied (default %(default)s)")
    g.add_argument("--top-k", type=int, default=d.top_k, metavar="K",
                   help="sample only among the k most probable characters")
    g.add_argument("--top-p", type=float, default=d.top_p, metavar="P",
                   help="sample only among the most probable characters whose probability adds up to p, in (0, 1]")
    g.add_argument("--greedy", action="store_true",
                   help="always take the most probable character (ignores temperature, top-k, top-p)")
    g.add_argument("--seed", type=int, default=d.seed, metavar="N",
                   help="same seed, same text (default: a random seed, printed on stderr)")
    g.add_argument("--num-samples", type=int, default=d.num_samples, metavar="N",
                   help="sequences generated together as one batch from the same start (default %(default)s)")
    g = p.add_argument_group("output")
    g.add_argument("--stream", action="store_true",
                   help="print characters as they are generated (one sample only)")
    g.add_argument("--json", action="store_true",
                   help="one JSON object per sample per line: index, start, text (the generated characters), "
                   "and the settings")
    g.add_argument("--out", default=None, metavar="FILE",
                   help="write the output to this file (atomically) instead of stdout; with --stream the "
                   "characters still stream to stdout and the file is written at the end")
    g.add_argument("-q", "--quiet", action="store_true", help="no log on stderr (errors still go there)")
    g = p.add_argument_group("compute")
    g.add_argument("--threads", type=int, default=d.threads, metavar="N",
                   help="intra-op threads, and at large batches on onnxruntime the threads that each step "
                   "their own rows (default: the runtime's own; every usable CPU)")
    g.add_argument("--device", choices=DEVICES, default=d.device,
                   help="cuda: onnxruntime's CUDA provider or TensorFlow's GPU (default %(default)s)")


def add_sample_parser(sub) -> None:
    """The `charrnn-export sample` subcommand: the same flags and function as this module's CLI."""
    p = sub.add_parser("sample", help="generate text from an exported model (or a checkpoint)",
                       description=DESCRIPTION)
    add_sample_arguments(p)
    p.set_defaults(func=run_sample)


def build_parser() -> Parser:
    p = Parser(prog="python -m charrnn_export.sample", description=DESCRIPTION)
    add_sample_arguments(p)
    return p


def check_options(args) -> SamplingConfig:
    """Every flag problem, before a model is loaded (loading TensorFlow takes seconds)."""
    sampling = SamplingConfig.checked(args.temperature, args.top_k, args.top_p, args.greedy, names=SAMPLING_FLAGS)
    check_length(args.length, "--length")
    check_count(args.num_samples, "--num-samples", MAX_SAMPLES)
    if args.stream and args.num_samples > 1:
        raise ConfigError("--stream prints one sample as it is generated; use --num-samples 1, or drop --stream "
                          "to generate the samples together and print them at the end")
    if args.stream and args.json:
        raise ConfigError("--stream prints plain characters; drop --json (or --stream)")
    check_threads(args.threads, "--threads")  # also refuses more threads than the machine has CPUs
    check_seed(args.seed, "--seed")
    check_memory(args)
    if args.vocab is not None and args.runtime != "keras":
        raise ConfigError(f"--vocab is for --runtime keras; a {args.runtime} model carries its own vocabulary")
    if args.out is not None:
        # Now, not after the text is made: a text that cannot be written is lost.
        check_writable_file(args.out, f"--out {args.out}")
    if args.runtime not in ONNX_FILE_RUNTIMES and args.model in SHIPPED:
        raise ConfigError(f"--model {args.model} names a shipped ONNX model; use it with --runtime onnx, openvino or auto")
    return sampling


def keeps_text(args) -> bool:
    """Whether the generated text is held until the end: all but --stream to stdout alone."""
    return not args.stream or args.out is not None


def check_memory(args) -> None:
    """The samples and the text they keep must fit in memory: refused now, naming the flag, not a
    MemoryError (or the kernel's OOM killer) after minutes of work."""
    kept = keeps_text(args)
    if args.num_samples > 1:  # the rows, each with the text it keeps
        check_fits_memory(args.num_samples, ROW_BYTES + kept * (args.length + len(args.start)) * KEPT_CHAR_BYTES,
                          "--num-samples")
    if kept:  # the text held until it is written: --length characters per sample
        check_fits_memory(args.length, KEPT_CHAR_BYTES * args.num_samples, "--length")


# ---------------------------------------------------------------- the command


def run_sample(args) -> int:
    sampling = check_options(args)
    log = (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    # Without --seed, pick one and say which, so a text worth keeping can be made again.
    seed = args.seed if args.seed is not None else random_seed()

    t0 = time.perf_counter()
    generator = Generator.load(args.model, runtime=args.runtime, threads=args.threads, device=args.device,
                               vocab_path=args.vocab)
    load_seconds = time.perf_counter() - t0
    start = generator.clean_start(args.start, args.unknown)
    options = dict(temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
                   greedy=sampling.greedy, seed=seed)

    # The log starts only now that nothing more can fail, so an error is the only line on stderr.
    runtime = generator.runtime
    model_name = str(getattr(runtime, "path", None) or args.model)
    log(f"loaded {runtime.name} model {model_name}: a state {runtime.rnn_units} wide, vocabulary of "
        f"{len(generator.vocab)} ({load_seconds:.2f}s)")
    if start != args.start:
        dropped = dict.fromkeys(c for c in args.start if c not in generator.vocab.index)
        log(f"dropped start characters outside the vocabulary: {' '.join(repr(c) for c in dropped)}")
    log(f"generating {args.num_samples} x {args.length} characters, seed {seed}")

    t0 = time.perf_counter()
    made: list = [[] for _ in range(args.num_samples)]  # characters so far, kept on Ctrl-C
    if not keeps_text(args):
        made[0] = Counted()  # --stream to stdout alone: the text is on the terminal, not in memory
    interrupted = False
    try:
        try:
            if args.stream:
                stream_to_stdout(generator, start, args.length, options, made[0])
            else:
                collect(generator, [start] * args.num_samples, args.length, sampling, seed, made)
        except KeyboardInterrupt:
            interrupted = True  # keep what was made: written below like a finished text
            if args.stream:
                sys.stdout.write("\n")
        texts = ["".join(chars) for chars in made]
        seconds = time.perf_counter() - t0
        if args.json:
            output = format_json(texts, start, runtime.name, model_name, args.length, options)
        else:
            output = format_text(texts, start)
        if args.out is not None:
            try:
                write_out(args.out, output)
            except WriteError as e:
                return keep_unwritten(e, output, texts, args.stream)
        elif not args.stream:
            sys.stdout.write(output)
            sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`... | head`): stop quietly, as other command-line tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what the shell reports for a tool killed by the broken pipe
    if interrupted:
        chars = sum(len(t) for t in made)
        print(f"{ERROR_PREFIX} interrupted after {chars} character(s); the text made so far was "
              + (f"written to {args.out}" if args.out is not None else "printed"), file=sys.stderr)
        return 130
    chars = args.length * args.num_samples
    log(f"generated {chars} characters in {seconds:.2f}s ({chars / max(seconds, 1e-9):,.0f} chars/s)"
        + (f"; wrote {args.out}" if args.out is not None else ""))
    return 0


def write_out(path: str, output: str) -> None:
    """Write --out atomically (a reader never sees half a file, even if we are killed); WriteError
    (one line, a full disk named as such) when it cannot be written. realpath: through a
    symlink, replace the file it points to, not the link."""
    try:
        atomic_write_text(os.path.realpath(path), output)
    except WriteError:
        raise
    except OSError as e:
        raise WriteError(f"cannot write --out {path} ({e.strerror or e}); choose a writable file path") from None


def keep_unwritten(error: WriteError, output: str, texts: list[str], streamed: bool) -> int:
    """--out could not be written (a full disk): nothing generated is lost. The text goes to
    stdout (unless --stream already printed it there) and one line says where it is; exit 2.
    The old --out, if any, is left as it was (the write is atomic)."""
    chars = sum(len(t) for t in texts)
    if not streamed:
        try:
            sys.stdout.write(output)
            sys.stdout.flush()
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    where = "was printed on stdout as it was made" if streamed else "is on stdout instead"
    print(f"{ERROR_PREFIX} {error}; the text generated ({chars:,} character(s)) {where}", file=sys.stderr)
    return error.exit_status


class Counted:
    """Stands for the list of characters made when only their number is needed (--stream to
    stdout alone keeps nothing, however long the text): it counts, and joins to nothing."""

    def __init__(self):
        self.count = 0

    def append(self, char: str) -> None:
        self.count += 1

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        return iter(())


def stream_to_stdout(generator: Generator, start: str, length: int, options: dict, generated) -> None:
    """Print the start, then each character as soon as it is made, appending it to `generated`
    (a list, or Counted)."""
    out = sys.stdout
    out.write(start)
    out.flush()
    for char in generator.stream(start, length, **options):
        out.write(char)
        out.flush()  # the point of --stream: the reader sees each character now, not at a buffer's end
        generated.append(char)
    out.write("\n")
    out.flush()


def collect(generator: Generator, starts: list[str], length: int, sampling: SamplingConfig, seed: int,
            made: list[list[str]]) -> None:
    """generate_batch, one character at a time into `made` (a list per sample), so that an
    interrupt keeps every character made before it."""
    chars = generator.vocab.chars
    for row, token in generator.generate_ids(starts, length, sampling, seed):
        made[row].append(chars[token])


def format_text(texts: list[str], start: str) -> str:
    """Each sample is its start then its characters, ended by a newline; a separator line between."""
    return f"{SEPARATOR}\n".join(f"{start}{text}\n" for text in texts)


def format_json(texts: list[str], start: str, runtime: str, model: str, length: int, options: dict) -> str:
    settings = {"runtime": runtime, "model": model, "length": length, **options}
    return "".join(json.dumps({"index": i, "start": start, "text": text, **settings}, ensure_ascii=False) + "\n"
                   for i, text in enumerate(texts))


def main(argv: list[str] | None = None) -> int:
    """`python -m charrnn_export.sample`."""
    return run_guarded(run_sample, build_parser().parse_args(argv))
