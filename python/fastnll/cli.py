"""The ``fastnll`` command: ``eval``, ``compare`` and ``demo``.

Exit codes: 0 success, 1 bad data (missing or unreadable file, bad shape, wrong kind, target
out of range, missing matplotlib for --plot, a full disk, a closed stdout...), 2 usage error
(including out-of-range values and an output that is also an input), 130 interrupted
(SIGINT), 143 terminated (SIGTERM). Every failure is one line on stderr, never a traceback
(set FASTNLL_DEBUG=1 to see one for internal errors). Outputs (--json, --per-row, --plot) are
written to a temporary file and renamed into place only on success: a failed or interrupted
run leaves no partial file and an existing file as it was.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from typing import Any, NoReturn

import numpy as np

from ._atomic import AtomicOutput, check_output_path
from ._options import BINS_WHY, INT64, MAX_BINS, MAX_TOP_K, TOP_K_WHY
from .readers import KNOWN_SUFFIXES, parse_dtype, parse_shape, split_key

__all__ = ["build_parser", "main"]

PROG = "fastnll"


class UsageError(Exception):
    """Bad command-line usage found after parsing (exit 2)."""


class Terminated(BaseException):
    """SIGTERM arrived (raised by the CLI's handler so outputs are cleaned up; exit 143)."""


# demo: the dump is built in memory with float64 temporaries (~40 bytes per element)
MAX_DEMO_ELEMENTS = 1 << 24
MAX_CHUNK_MB = 1 << 20


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _dtype_arg(text: str) -> np.dtype:
    try:
        return parse_dtype(text)
    except (ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _shape_arg(text: str) -> tuple[int, ...]:
    try:
        return parse_shape(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _int_in(lo: int, hi: int, why: str = "") -> Any:
    """An argparse type: an integer in [lo, hi], else a usage error saying the bound."""
    want = "a positive integer" if lo == 1 else "an integer" if lo < 0 else f"an integer >= {lo}"

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if not lo <= v <= hi:
            reason = f" ({why})" if why else ""
            if (lo, hi) == INT64:
                raise argparse.ArgumentTypeError(f"{v} does not fit in int64{reason}")
            raise argparse.ArgumentTypeError(f"expected {want} of at most {hi}, got {v}{reason}")
        return v

    return parse


_positive = _int_in(1, 2**63 - 1)


def _common(p: argparse.ArgumentParser, eval_opts: bool) -> None:
    p.add_argument(
        "--kind",
        choices=("logits", "log_probs", "probs"),
        default="logits",
        help="what the dump holds (default: logits)",
    )
    p.add_argument(
        "--ignore-index",
        type=_int_in(*INT64),
        default=-100,
        metavar="N",
        help="target value of rows not scored (default: -100)",
    )
    p.add_argument(
        "--shift",
        action="store_true",
        help="causal LM dump: score preds[:, :-1] against targets[:, 1:]",
    )
    if eval_opts:
        p.add_argument(
            "--top-k",
            type=_int_in(1, MAX_TOP_K, TOP_K_WHY),
            nargs="+",
            default=[1, 5],
            metavar="K",
            help="k values for top-k accuracy (default: 1 5)",
        )
        p.add_argument(
            "--bins",
            type=_int_in(1, MAX_BINS, BINS_WHY),
            default=15,
            metavar="N",
            help=f"equal-width confidence bins for ECE/MCE (default: 15, at most {MAX_BINS})",
        )
        p.add_argument(
            "--plot",
            metavar="FILE.png",
            help="write a reliability diagram (needs matplotlib: fastnll[plot])",
        )
        p.add_argument(
            "--per-row",
            metavar="FILE.npy",
            help="write per-row records (nll float64, rank int64) to a .npy file",
        )
        p.add_argument(
            "--ties",
            choices=("target", "first"),
            default="target",
            help="top-1 rule: a tie with the best class counts for the target "
            "(default) or the first maximal index wins (torch's argmax)",
        )
        p.add_argument(
            "--fit-temperature",
            action="store_true",
            help="also fit the temperature T of softmax(x / T) that minimises the "
            "NLL (a few more reads) and report NLL / ECE before and after",
        )
        p.add_argument(
            "--plot-positions",
            metavar="FILE.png",
            help="write the mean NLL per position t of a [B, T, V] dump",
        )
    p.add_argument("--json", metavar="FILE", help="write the report as JSON ('-' = stdout)")
    p.add_argument("--dtype", type=_dtype_arg, help="dtype of raw binary prediction files")
    p.add_argument(
        "--shape",
        type=_shape_arg,
        help="shape of raw binary prediction files, e.g. 1000,50257 (one -1 allowed)",
    )
    p.add_argument(
        "--target-dtype",
        type=_dtype_arg,
        default=None,
        help="dtype of a raw binary targets file (default: int64)",
    )
    p.add_argument(
        "--chunk-mb",
        type=_int_in(1, MAX_CHUNK_MB, "a chunk is read at once"),
        default=256,
        metavar="MB",
        help="rows are read in chunks of about this many MiB (default: 256)",
    )
    p.add_argument(
        "--no-kind-check",
        action="store_true",
        help="skip the sampled check that the data matches --kind",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on a running Dask cluster, e.g. tcp://host:8786 (fastnll[dask])",
    )
    where.add_argument(
        "--workers",
        type=_positive,
        metavar="N",
        help="run on a new local Dask cluster of N worker processes",
    )
    prog = p.add_mutually_exclusive_group()
    prog.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="always show the progress bar",
    )
    prog.add_argument(
        "--no-progress", dest="progress", action="store_false", help="never show the progress bar"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Score prediction dumps: loss, perplexity, "
        "accuracy, top-k, calibration; compare two models' dumps.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    ev = sub.add_parser(
        "eval",
        help="evaluate one dump against its targets",
        description="Evaluate a prediction dump against integer targets.",
    )
    ev.add_argument(
        "paths",
        nargs="+",
        metavar="PREDS... TARGETS...",
        help="predictions (.npy, .npz[:key], .safetensors[:key], .pt[:key] or raw), "
        "then as many integer target files; each may be a glob or a directory of "
        "shards, matched by sorted name",
    )
    _common(ev, True)
    cmp_ = sub.add_parser(
        "compare",
        help="compare two models' dumps on the same targets",
        description="KL(base || new), NLL difference and top-1 agreement.",
    )
    cmp_.add_argument(
        "paths",
        nargs="+",
        metavar="BASE... NEW... TARGETS...",
        help="baseline model's predictions, new model's predictions, integer "
        "targets (equal numbers of files, globs or directories of shards)",
    )
    _common(cmp_, False)
    cmp_.add_argument(
        "--per-row",
        metavar="FILE.npy",
        help="write per-row records (kl, dp, nll_base, nll_new float64, "
        "same_top1 int8) to a .npy file",
    )
    cmp_.add_argument(
        "--plot", metavar="FILE.png", help="write a histogram of the per-row KL (needs matplotlib)"
    )
    demo = sub.add_parser(
        "demo",
        help="evaluate a small synthetic, calibrated dump",
        description="Write a synthetic logits dump to a temporary directory "
        "and evaluate it through the same path as 'eval'.",
    )
    demo_why = "the demo builds its dump in memory"
    demo.add_argument("--rows", type=_int_in(1, MAX_DEMO_ELEMENTS, demo_why), default=20000)
    demo.add_argument("--classes", type=_int_in(1, MAX_DEMO_ELEMENTS, demo_why), default=100)
    demo.add_argument("--seed", type=_int_in(0, 2**128), default=0)
    demo.add_argument("--json", metavar="FILE", help="write the report as JSON ('-' = stdout)")
    demo.add_argument("--plot", metavar="FILE.png", help="write a reliability diagram")
    return parser


def _is_raw(path: str) -> bool:
    return split_key(path)[0].suffix.lower() not in KNOWN_SUFFIXES


def _outputs(a: argparse.Namespace) -> list[tuple[str, str]]:
    """(option, path) of every file this run writes."""
    out = [("--json", a.json)] if getattr(a, "json", None) not in (None, "-") else []
    for flag, attr in (
        ("--per-row", "per_row"),
        ("--plot", "plot"),
        ("--plot-positions", "plot_positions"),
    ):
        if getattr(a, attr, None):
            out.append((flag, getattr(a, attr)))
    return out


def _check_outputs(a: argparse.Namespace, inputs: Sequence[str]) -> None:
    """An output may not be an input (it would destroy it) nor another output."""
    files = [os.fspath(split_key(p)[0]) for p in inputs]
    outs = _outputs(a)
    for flag, path in outs:
        try:
            check_output_path(path, files, flag)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    real = [os.path.realpath(p) for _, p in outs]
    for i, (flag, path) in enumerate(outs):
        if real[i] in real[:i]:
            raise UsageError(f"{flag} {path} names the same file as another output")


def _check_usage(a: argparse.Namespace, pred_paths: Sequence[str]) -> None:
    _check_outputs(a, list(pred_paths) + [a.targets])
    if (a.dtype is None) != (a.shape is None):
        raise UsageError("--dtype and --shape go together (they describe raw binary files)")
    if a.dtype is not None and not any(_is_raw(p) for p in pred_paths):
        raise UsageError(
            "--dtype/--shape are only for raw binary files; "
            f"{pred_paths[0]} records its own dtype and shape"
        )
    if getattr(a, "plot", None) or getattr(a, "plot_positions", None):
        from ._plot import require_matplotlib

        require_matplotlib()


def _write_json(dest: str, obj: dict[str, Any], inputs: Sequence[str] = ()) -> None:
    text = json.dumps(obj, indent=2, allow_nan=False) + "\n"
    if dest == "-":
        _stream(sys.stdout, "standard output").write(text)
        return
    with AtomicOutput(dest, [os.fspath(split_key(p)[0]) for p in inputs], "--json") as out:
        out.file.write(text.encode())


def _stream(stream: Any, name: str) -> Any:
    if stream is None:
        raise OSError(f"cannot write the report: {name} is closed")
    return stream


def _say(a: argparse.Namespace, text: str) -> None:
    """Human output goes to stdout unless stdout carries the JSON."""
    if getattr(a, "json", None) == "-":
        print(text, file=_stream(sys.stderr, "standard error"))
    else:
        print(text, file=_stream(sys.stdout, "standard output"))


def _cmd_eval(a: argparse.Namespace) -> Any:
    """Run 'eval' (also the demo's path); returns the EvalReport."""
    from . import _shard_runs
    from ._report import format_eval
    from .evaluate import evaluate

    _shard_runs.split_cli(a, ("preds", "targets"))
    _check_usage(a, (a.shards or [[a.preds]])[0])
    report = (
        _shard_runs.cli_evaluate(a)
        if a.shards
        else evaluate(
            a.preds,
            a.targets,
            kind=a.kind,
            ignore_index=a.ignore_index,
            top_k=tuple(a.top_k),
            n_bins=a.bins,
            shift=a.shift,
            per_row=a.per_row or False,
            chunk_bytes=a.chunk_mb << 20,
            progress=a.progress,
            dtype=a.dtype,
            shape=a.shape,
            target_dtype=a.target_dtype,
            check_kind=not a.no_kind_check,
            ties=a.ties,
            per_position=bool(getattr(a, "plot_positions", None)),
        )
    )
    _say(a, format_eval(report, f"fastnll eval: {a.preds} against {a.targets}"))
    if a.per_row:
        _say(a, f"\nper-row nll/rank records written to {a.per_row}")
    if a.plot:
        from ._plot import reliability_diagram

        with AtomicOutput(a.plot, [split_key(p)[0] for p in (a.preds, a.targets)], "--plot") as out:
            reliability_diagram(report, out.path, title=os.path.basename(a.preds))
        _say(a, f"reliability diagram written to {a.plot}")
    fit = None
    if getattr(a, "fit_temperature", False):
        from ._temperature import fit_temperature

        fit = fit_temperature(
            a.preds,
            a.targets,
            kind="log_probs" if a.kind == "log_probs" else "logits",
            ignore_index=a.ignore_index,
            shift=a.shift,
            n_bins=a.bins,
            chunk_bytes=a.chunk_mb << 20,
            dtype=a.dtype,
            shape=a.shape,
            target_dtype=a.target_dtype,
        )
        _say(
            a,
            f"\n  fitted temperature  T = {fit.temperature:.6g} ({fit.iterations} "
            f"passes)\n  NLL  {fit.nll_before:.6f} -> {fit.nll_after:.6f}\n"
            f"  ECE  {fit.ece_before:.6f} -> {fit.ece_after:.6f}",
        )
    if getattr(a, "plot_positions", None):
        from ._plot import position_curve

        with AtomicOutput(
            a.plot_positions, [split_key(p)[0] for p in (a.preds, a.targets)], "--plot-positions"
        ) as out:
            position_curve(report.extras, out.path, title=os.path.basename(a.preds))
        _say(a, f"per-position NLL curve written to {a.plot_positions}")
    if a.json:
        obj = report.to_dict()
        obj["inputs"] = {
            "preds": a.preds,
            "targets": a.targets,
            "ignore_index": a.ignore_index,
            "shift": a.shift,
        }
        if fit is not None:
            obj["temperature"] = fit.to_dict()
        _write_json(a.json, obj, [a.preds, a.targets])
    return report


def _cmd_compare(a: argparse.Namespace) -> int:
    from . import _shard_runs
    from ._report import format_compare
    from .evaluate import compare

    _shard_runs.split_cli(a, ("base", "new", "targets"))
    _check_usage(a, a.shards[0] + a.shards[1] if a.shards else [a.base, a.new])
    report = (
        _shard_runs.cli_compare(a)
        if a.shards
        else compare(
            a.base,
            a.new,
            a.targets,
            kind=a.kind,
            ignore_index=a.ignore_index,
            shift=a.shift,
            chunk_bytes=a.chunk_mb << 20,
            progress=a.progress,
            dtype=a.dtype,
            shape=a.shape,
            target_dtype=a.target_dtype,
            check_kind=not a.no_kind_check,
            per_row=a.per_row or False,
        )
    )
    _say(
        a,
        format_compare(report, f"fastnll compare: base {a.base}, new {a.new}, targets {a.targets}"),
    )
    if a.per_row:
        _say(a, f"\nper-row kl/dp/nll_base/nll_new/same_top1 records written to {a.per_row}")
    if a.plot:
        from ._plot import kl_histogram

        with AtomicOutput(
            a.plot, [split_key(p)[0] for p in (a.base, a.new, a.targets)], "--plot"
        ) as out:
            kl_histogram(
                report, out.path, title=f"{os.path.basename(a.new)} vs {os.path.basename(a.base)}"
            )
        _say(a, f"KL histogram written to {a.plot}")
    if a.json:
        obj = report.to_dict()
        obj["inputs"] = {
            "base": a.base,
            "new": a.new,
            "targets": a.targets,
            "ignore_index": a.ignore_index,
            "shift": a.shift,
        }
        _write_json(a.json, obj, [a.base, a.new, a.targets])
    return 0


def make_demo_dump(directory: str, rows: int, classes: int, seed: int) -> dict[str, Any]:
    """Write logits.npy (float32) and targets.npy, targets drawn from the softmax (so the
    dump is calibrated); returns the paths and the NumPy float64 reference mean NLL."""
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((rows, classes)) * 2.0).astype(np.float32)
    x = logits.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    lse = np.log(np.exp(x - m).sum(axis=1)) + m[:, 0]
    cdf = np.cumsum(np.exp(x - lse[:, None]), axis=1)
    targets = np.minimum((cdf < rng.random((rows, 1))).sum(axis=1), classes - 1)
    preds_path, target_path = (
        os.path.join(directory, "logits.npy"),
        os.path.join(directory, "targets.npy"),
    )
    np.save(preds_path, logits)
    np.save(target_path, targets.astype(np.int64))
    ref = float(np.mean(lse - x[np.arange(rows), targets]))
    return {"preds": preds_path, "targets": target_path, "reference_mean_nll": ref}


def _cmd_demo(a: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if a.rows * a.classes > MAX_DEMO_ELEMENTS:
        raise UsageError(
            f"demo --rows x --classes must be at most {MAX_DEMO_ELEMENTS:,} "
            f"elements, got {a.rows * a.classes:,} (the demo builds its dump in "
            f"memory; evaluate your own dump with 'fastnll eval' instead)"
        )
    _check_outputs(a, [])
    if a.plot:
        from ._plot import require_matplotlib

        require_matplotlib()
    with tempfile.TemporaryDirectory(prefix="fastnll-demo-") as tmp:
        dump = make_demo_dump(tmp, a.rows, a.classes, a.seed)
        _say(a, f"demo: {a.rows} x {a.classes} float32 logits, targets drawn from the softmax")
        ev_args = parser.parse_args(["eval", dump["preds"], dump["targets"]])
        ev_args.json, ev_args.plot = a.json, a.plot
        got = _cmd_eval(ev_args).mean_nll
    ref = dump["reference_mean_nll"]
    _say(
        a,
        f"\n  NumPy float64 reference mean NLL  {ref:.12f}\n"
        f"  fastnll mean NLL                  {got:.12f}\n"
        f"  absolute difference               {abs(got - ref):.3e}",
    )
    return 0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _glue_negative_shape(argv: list[str]) -> list[str]:
    """``--shape -1,4096`` -> ``--shape=-1,4096`` (argparse would take -1,4096 for an option)."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] == "--shape" and arg.startswith("-") and arg[1:2].isdigit():
            out[-1] = f"--shape={arg}"
        else:
            out.append(arg)
    return out


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def _run(a: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if a.command == "eval":
        _cmd_eval(a)
        return 0
    if a.command == "compare":
        return _cmd_compare(a)
    return _cmd_demo(a, parser)


def _finish_stdout() -> None:
    """Flush stdout now, so a failed write (a full device, a closed pipe) is an error and
    not a silent exit 0."""
    if sys.stdout is not None:
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fastnll`` console script; returns the exit code."""
    parser = build_parser()
    old_term: Any = None
    try:
        args = list(sys.argv[1:] if argv is None else argv)
        a = parser.parse_args(_glue_negative_shape(args))
        if a.command is None:
            parser.error("choose a command: eval, compare or demo")
        _stream(sys.stdout, "standard output")  # the table or the JSON goes there
        try:  # SIGTERM cleans up like Ctrl-C (only the main thread may set handlers)
            old_term = signal.signal(signal.SIGTERM, _on_sigterm)
        except (ValueError, OSError):
            old_term = None
        code = _run(a, parser)
        _finish_stdout()
        return code
    except KeyboardInterrupt:
        _stderr(f"\n{PROG}: interrupted\n")
        return 130
    except Terminated:
        _stderr(f"\n{PROG}: terminated\n")
        return 143
    except UsageError as exc:
        sys.stderr.write(f"{PROG}: error: {_one_line(exc)} (see '{PROG} --help')\n")
        return 2
    except BrokenPipeError:  # e.g. piped into head: stop quietly
        _quiet_stdout()
        return 1
    except (ValueError, TypeError, IndexError, OSError, ImportError, MemoryError) as exc:
        if isinstance(exc, MemoryError):
            _stderr(f"{PROG}: error: out of memory (try a smaller --chunk-mb)\n")
        else:
            _stderr(f"{PROG}: error: {_one_line(exc)}\n")
        if isinstance(exc, OSError) and exc.errno is not None and sys.stdout is not None:
            _quiet_stdout()  # the interpreter's final flush would fail the same way
        return 1
    except Exception as exc:  # a bug: still one line unless asked for the traceback
        if os.environ.get("FASTNLL_DEBUG"):
            raise
        _stderr(f"{PROG}: internal error: {type(exc).__name__}: {_one_line(exc)}\n")
        return 1
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


def _stderr(text: str) -> None:
    if sys.stderr is not None:
        try:
            sys.stderr.write(text)
            sys.stderr.flush()
        except OSError:
            pass


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's exit flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, AttributeError, ValueError):
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
