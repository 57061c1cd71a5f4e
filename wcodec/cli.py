"""Command line: ``wcodec encode``, ``wcodec decode`` and ``wcodec stats``.

Exit status: 0 on success, 1 for rejected input or options (missing file, existing
output, unsupported tensor), 2 for a damaged or invalid ``.wbs`` file, 3 for an internal
error. Errors print one line on stderr; set WCODEC_DEBUG=1 to get the traceback of an
internal error.
"""

import json
import logging
import math
import os
import signal
import sys

import click

from wcodec import analysis, decoder, encoder, rate_control, stats
from wcodec.codec import ordering, quantization
from wcodec.errors import InputError, WbsFormatError, WcodecError
from wcodec.formats import container
from wcodec.formats.inputs import check_regular_file

EXIT_INPUT = 1
EXIT_FORMAT = 2
EXIT_INTERNAL = 3


def _fail(message, status):
    click.echo(f"wcodec: error: {message}", err=True)
    sys.exit(status)


def _run(action):
    """Run ``action`` and turn every expected failure into one line on stderr."""
    try:
        return action()
    except WbsFormatError as error:
        _fail(str(error), EXIT_FORMAT)
    except WcodecError as error:
        _fail(str(error), EXIT_INPUT)
    except BrokenPipeError:
        # The reader of stdout closed it (as in `wcodec stats model.wbs | head`). Outputs are
        # complete by the time anything is printed, so the command still succeeded.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except OSError as error:
        target = f"{error.filename}: " if error.filename else ""
        _fail(f"{target}{error.strerror or error}", EXIT_INPUT)
    except KeyboardInterrupt:
        _fail("interrupted; no output was written", 130)
    except Exception as error:  # noqa: BLE001 - the last resort keeps the one-line promise
        if os.environ.get("WCODEC_DEBUG"):
            raise
        _fail(f"internal error: {type(error).__name__}: {error} (rerun with WCODEC_DEBUG=1 "
              f"for the traceback and report it)", EXIT_INTERNAL)


class _Progress:
    """A click progress bar over tensors, drawn only when stderr is a terminal."""

    def __init__(self, label, total):
        self.bar = None
        if sys.stderr.isatty():
            self.bar = click.progressbar(length=total, label=label, file=sys.stderr,
                                         show_pos=True, item_show_func=lambda name: name)

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False

    def __call__(self, name):
        if self.bar is not None:
            self.bar.update(1, name)


def _limits(max_output_gib):
    """Return decoder limits with the given output size in GiB (None keeps the default, inf
    lifts the limit)."""
    if max_output_gib is None:
        return container.DecodeLimits()
    if math.isnan(max_output_gib):
        raise InputError("--max-output-size must be a number of GiB, found nan")
    if math.isinf(max_output_gib):
        return container.DecodeLimits(max_output_bytes=1 << 62)
    return container.DecodeLimits(max_output_bytes=int(max_output_gib * (1 << 30)))


def _parse_qp_for(item):
    """Split a --qp-for value PATTERN=QP at its last '='."""
    pattern, separator, value = item.rpartition("=")
    try:
        qp = int(value)
    except ValueError:
        qp = None
    if not separator or not pattern or qp is None:
        raise InputError(f"--qp-for {item!r} is not PATTERN=QP with an integer QP")
    return pattern, qp


def _tensor_count(path):
    from wcodec.formats.safetensors_io import SafetensorsReader

    with SafetensorsReader(path) as reader:
        return len(reader.tensors)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="wcodec")
@click.option("-v", "--verbose", is_flag=True, help="Log each coding decision worth knowing.")
def cli(verbose):
    """Compress neural-network weights (safetensors) into .wbs bitstreams and back."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="wcodec: %(levelname)s: %(message)s", stream=sys.stderr)


@cli.command()
@click.argument("src", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "dst", required=True, type=click.Path(dir_okay=False),
              help="Path of the .wbs file to write.")
@click.option("--qp", type=int, default=None,
              help="Quantization parameter: step = (4 + qp mod 4) * 2^(floor(qp/4) - 2), "
                   f"as in MPEG NNC; lower is finer.  [default: {quantization.DEFAULT_QP}]")
@click.option("--bpw", type=float, default=None,
              help="Instead of --qp: reach this many bits per weight over the whole file "
                   "(within 2%) by searching qp per tensor. Costs about ten encodes.")
@click.option("--sqnr", type=float, default=None,
              help="Instead of --qp: reach this SQNR in dB over the floating tensors with two "
                   "or more dimensions (within 0.2 dB) by searching qp per tensor.")
@click.option("--qp-for", "qp_for", multiple=True, metavar="PATTERN=QP",
              help="Use QP for tensors whose name matches PATTERN (glob or regular expression, "
                   "as --keep); the first match wins. Repeatable. QP applies as given, also to "
                   "tensors of fewer than two dimensions, which --qp codes 24 steps finer.")
@click.option("--keep", multiple=True, metavar="PATTERN",
              help="Store tensors whose name matches PATTERN (a glob, or a regular expression "
                   "matching the whole name) bit-exact. Repeatable.")
@click.option("--mode", type=click.Choice(encoder.PREDICTION_MODES), default=encoder.DEFAULT_MODE,
              show_default=True,
              help="Inter-layer prediction: intra (none), collocated (same block of the "
                   "previous frame), adjacent (best block of the previous frame), full (best "
                   "block of the last 4 frames), or auto (the smallest of these per frame).")
@click.option("--order", type=click.Choice(ordering.ORDER_METHODS), default=ordering.DEFAULT_ORDER,
              show_default=True,
              help="Frame coding order: file (as stored), natural (numeric-aware names, so "
                   "layer.9 precedes layer.10), or greedy (each frame after its best reference).")
@click.option("--quantizer", type=click.Choice(encoder.QUANTIZERS), default="uniform",
              show_default=True,
              help="uniform: round to the nearest multiple of the step (error at most half a "
                   "step, or half a step per DCT coefficient in transform frames). dependent: trellis-coded quantization with two interleaved "
                   "quantizers, as MPEG NNC; smaller files at equal SQNR, but about 5 dB lower "
                   "SQNR at equal qp and errors up to about two steps.")
@click.option("--rdoq", is_flag=True,
              help="Rate-distortion optimized uniform quantization: a level may move one step "
                   "towards zero where that saves enough bits (error up to 1.5 steps).")
@click.option("--transform/--no-transform", default=True, show_default=True,
              help="Let frames of 16- to 64-bit floats with small kernels (up to 8x8 taps) be "
                   "coded as DCT coefficients of each kernel wherever intra coding is a "
                   "candidate, when that is smaller. A weight's error is then up to sqrt(taps) times the "
                   "quantizer's (1.5 steps for 3x3 kernels); --no-transform keeps every "
                   "weight within the quantizer's own bound.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
              help="Worker threads that code independent tensors in parallel  [default: all "
                   "cores, one below 262,144 values]. The output does not depend on it.")
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
def encode(src, dst, qp, bpw, sqnr, qp_for, keep, mode, order, quantizer, rdoq, transform, jobs,
           force):
    """Encode the safetensors file SRC into a .wbs file."""

    def action():
        targets = [name for name, value in (("--qp", qp), ("--bpw", bpw), ("--sqnr", sqnr))
                   if value is not None]
        if len(targets) > 1:
            raise InputError(f"{' and '.join(targets)} exclude each other; give one of them")
        if rdoq and quantizer != "uniform":
            raise InputError("--rdoq applies to uniform quantization only; drop it or use "
                             "--quantizer uniform")
        overrides = tuple(_parse_qp_for(item) for item in qp_for)
        options = dict(keep=keep, mode=mode, order=order, quantizer=quantizer, rdoq=rdoq,
                       qp_for=overrides, transform=transform, jobs=jobs)
        if bpw is not None or sqnr is not None:
            result = rate_control.encode_to_target(src, dst, bpw=bpw, sqnr=sqnr, force=force,
                                                   **options)
            header = result.header
            reached = f", SQNR {result.sqnr_db:.2f} dB" if result.sqnr_db is not None else ""
            click.echo(f"rate control: {result.trials} trial encodes, "
                       f"{result.bits_per_weight:.3f} bits per weight{reached}")
        else:
            total = _tensor_count(src)
            with _Progress("encoding", total) as progress:
                header = encoder.encode_file(
                    src, dst, qp=quantization.DEFAULT_QP if qp is None else qp,
                    force=force, progress=progress, **options)
        size = os.path.getsize(dst)
        weights = sum(r.num_elements for r in header.tensors)
        rate = 8 * size / weights if weights else 0.0
        click.echo(f"{dst}: {len(header.tensors)} tensors, {weights} weights, {size} bytes, "
                   f"{rate:.3f} bits per weight")

    _run(action)


@cli.command()
@click.argument("src", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "dst", required=True, type=click.Path(dir_okay=False),
              help="Path of the safetensors file to write.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
              help="Worker threads that decode independent tensors in parallel  [default: all "
                   "cores, one below 262,144 values].")
@click.option("--max-output-size", "max_output", type=click.FloatRange(min=0), default=None,
              help="Reject files that declare more than this many GiB of tensors  [default: "
                   "64]. Lower it for files from untrusted sources.")
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
def decode(src, dst, jobs, max_output, force):
    """Decode the .wbs file SRC into a safetensors file."""

    def action():
        limits = _limits(max_output)
        with decoder.open_wbs(src, limits) as wbs:
            total = len(wbs.header.tensors)
        with _Progress("decoding", total) as progress:
            header = decoder.decode_file(src, dst, jobs=jobs, limits=limits, force=force,
                                         progress=progress)
        click.echo(f"{dst}: {len(header.tensors)} tensors, {os.path.getsize(dst)} bytes")

    _run(action)


@cli.command(name="stats")
@click.argument("src", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--tensor", metavar="NAME", help="Show the level histogram of this tensor only (.wbs input only).")
@click.option("--plot", "plot_path", metavar="FILE.png", type=click.Path(dir_okay=False),
              help="Draw the relative residual energies and residual histograms into this image file, "
                   "in the format that its extension names (png, svg, pdf, ...). An existing file is "
                   "replaced. Needs matplotlib: pip install 'wcodec[plot]'. Safetensors input only.")
@click.option("--max-candidates", type=click.IntRange(min=1), default=analysis.DEFAULT_MAX_CANDIDATES,
              show_default=True,
              help="Reference blocks that the best-match search examines per block and sign. A value "
                   "of at least the reference frame's block count makes the search exact. "
                   "Safetensors input only.")
@click.option("--max-output-size", "max_output", type=click.FloatRange(min=0), default=None,
              help="Reject .wbs files that declare more than this many GiB of tensors  "
                   "[default: 64].")
def stats_command(src, as_json, tensor, plot_path, max_candidates, max_output):
    """Show statistics of SRC, a .wbs file or an uncompressed safetensors model.

    For a .wbs file: bits, coding modes and level histograms per tensor.

    For a safetensors file: how well each frame (a floating tensor with two or more
    dimensions) is predicted by the previous frame with the same kernel shape, in
    natural name order. It prints the residual energy relative to the frame's energy
    for collocated and for best-match prediction, and the Laplace scale of the
    collocated residual.
    """

    def action():
        # A .wbs file starts with a fixed magic number, so any other file is read as safetensors.
        check_regular_file(src, "a .wbs or safetensors file")
        with open(src, "rb") as file:
            magic = file.read(len(container.MAGIC))

        if magic != container.MAGIC and not src.lower().endswith(".wbs"):
            if tensor is not None:
                raise InputError(f"{src}: --tensor applies only to .wbs files, and this is not one; drop --tensor")
            result = analysis.analyse_model(src, max_candidates=max_candidates)
            if plot_path is not None:
                analysis.plot_analysis(result, plot_path)
            click.echo(json.dumps(result, indent=2) if as_json else analysis.format_analysis(result))
            return

        if plot_path is not None:
            raise InputError(f"{src}: --plot applies only to safetensors input, and this is a .wbs file;"
                             " drop --plot, or pass the uncompressed model")
        try:
            result = stats.collect_stats(src, tensor=tensor, limits=_limits(max_output))
        except KeyError:
            raise InputError(f"{src}: no tensor named {tensor!r}; run 'wcodec stats "
                                   f"{src}' to list the names") from None
        if as_json:
            click.echo(json.dumps(result, indent=2))
        else:
            click.echo(stats.format_stats(result))

    _run(action)


def _terminate(signum, frame):
    raise KeyboardInterrupt


def main():
    """Entry point of the ``wcodec`` console script.

    Runs click in non-standalone mode so that usage errors, too, print one line and exit
    with status 1 (click's own handling prints several lines and exits with 2, the status
    reserved for damaged files).
    """
    # Turn SIGTERM into an exception so that temporary outputs are removed, as on Ctrl-C.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        status = cli.main(prog_name="wcodec", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as error:
        click.echo(error.ctx.get_help() if error.ctx else error.format_message())
        sys.exit(0)
    except click.UsageError as error:
        command = error.ctx.command_path if error.ctx else "wcodec"
        _fail(f"{error.format_message()} (see '{command} --help')", EXIT_INPUT)
    except click.ClickException as error:
        _fail(error.format_message(), EXIT_INPUT)
    except click.Abort:
        _fail("interrupted; no output was written", 130)
    sys.exit(status if isinstance(status, int) else 0)

