"""What every command shares: the Typer apps, the shared options, error handling and main()."""

from __future__ import annotations

import errno
import functools
import json
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup

from advisor import __version__
from advisor.errors import EXIT_USAGE, DataError, UserError

F = TypeVar("F", bound=Callable[..., Any])


class _OneValueGroup(TyperGroup):
    """The root command group: rejects a single-valued option given twice, before parsing.

    click (and so typer) silently keeps the last of repeated values, so
    ``--model-size 7B --model-size ''`` would plan for a size the user did not mean.
    """

    def main(  # type: ignore[override]
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the CLI; a parser error (unknown option, missing value, bad type) is one line
        ``Error: ...`` with a hint and exit status 2, as every other user error."""
        run = functools.partial(super().main, args, prog_name, complete_var, False, **extra)
        if not standalone_mode:
            return run()
        import typer.core
        from typer.exceptions import Abort

        # NOTE: typer vendors click; its exceptions live in typer.core's _click.
        _click: Any = getattr(typer.core, "_click")  # noqa: B009
        try:
            rv = run()
        except _click.exceptions.NoArgsIsHelpError as exc:
            from typer import rich_utils

            rich_utils.rich_format_error(exc)  # the command's help, as typer shows it
            sys.exit(exc.exit_code)
        except _click.exceptions.ClickException as exc:
            stderr_line(f"Error: {clip(exc.format_message())}")
            ctx = getattr(exc, "ctx", None)
            where = ctx.command_path if ctx is not None else "optadvise"
            stderr_line(f"  hint: see `{where} --help`")
            sys.exit(exc.exit_code)
        except Abort:
            stderr_line("Error: aborted")
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        repeated = repeated_option(self, ctx, args)
        if repeated is not None:
            from advisor.shell.render import err_console

            err_console.print(
                f"Error: {repeated} is given more than once; give each option once "
                "(only --rules-dir repeats)",
                markup=False,
                soft_wrap=True,
            )
            raise typer.Exit(EXIT_USAGE)
        return super().parse_args(ctx, args)


def repeated_option(group: TyperGroup, ctx: typer.Context, args: list[str]) -> str | None:
    """The first single-valued option that ``args`` give twice (any of its spellings,
    ``--x v`` or ``--x=v``, ``--flag`` or ``--no-flag``), following subcommands down.

    NOTE: typer vendors click and does not export its Option and Group classes, so options
    and groups are recognised by the attributes click gives them.
    """
    command: Any = group
    seen: dict[str, str] = {}
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if token == "--":
            break
        if token.startswith("-") and token != "-":
            name, eq, _ = token.partition("=")
            option = next(
                (
                    p
                    for p in command.params
                    if name in (*getattr(p, "opts", ()), *getattr(p, "secondary_opts", ()))
                    and hasattr(p, "is_flag")
                ),
                None,
            )
            if option is None:
                continue  # unknown: click reports it
            if not option.multiple and not getattr(option, "count", False):
                key = option.name or name
                if key in seen:
                    return seen[key] if seen[key] == name else f"{seen[key]}/{name}"
                seen[key] = name
            if not option.is_flag and not eq:
                i += 1  # its value, even one that starts with "-"
            continue
        if hasattr(command, "get_command"):
            sub = command.get_command(ctx, token)
            if sub is None:
                break  # click reports the unknown command
            command, seen = sub, {}
    return None


app = typer.Typer(
    cls=_OneValueGroup,
    name="optadvise",
    help=(
        "Decide how to train a model on the hardware you have: optimizer, precision, attention,\n"
        "memory savers and sharding, ranked by cost measured on your own device."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
profiles_app = typer.Typer(
    help="Hardware and model profiles for what-if planning.", no_args_is_help=True
)
app.add_typer(profiles_app, name="profiles")
rules_app = typer.Typer(help="Browse and check the rule base.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")

RulesDirOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--rules-dir",
        help="A folder of your own rule files, used alongside the shipped ones (repeatable).",
    ),
]


def rules_dirs(values: list[str] | None) -> list[Path]:
    """The --rules-dir folders: given, existing folders; the files in them that are not
    read (facts and taxonomy are the shipped ones) get a note."""
    from advisor import notes
    from advisor.rules.ruleset import RESERVED_FILES

    dirs: list[Path] = []
    for value in values or []:
        not_blank("--rules-dir", value)
        d = user_path(value, "--rules-dir")
        try:
            is_dir = d.is_dir()
        except OSError as exc:
            raise UserError(
                f"--rules-dir {value!r}: {exc.strerror}", "pass a readable folder"
            ) from None
        if not is_dir:
            what = "does not exist" if not os.path.lexists(d) else "is not a folder"
            raise UserError(f"--rules-dir {value!r} {what}", "pass a folder of rule files")
        for name in sorted(RESERVED_FILES):
            if (d / name).exists():
                notes.post(
                    f"--rules-dir {value}: {name} is not read (the facts and the taxonomy "
                    "are the shipped ones; a rules folder adds rules only)"
                )
        dirs.append(d)
    return dirs


def handle_errors(fn: F) -> F:
    """Turn user errors into one line on stderr and exit status 2; let bugs raise. The notes
    the command's layers posted (a cache not used or not written) follow, one line each."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DataError as exc:
            for problem in exc.problems:
                stderr_line(f"Error: {problem}")
            if exc.hint:
                stderr_line(f"  hint: {exc.hint}")
            raise typer.Exit(EXIT_USAGE) from None
        except UserError as exc:
            # NOTE: one line (the terminal may wrap it), so scripts can grep it; a hostile
            # value echoed in it is cut to a readable length.
            stderr_line(f"Error: {clip(exc.message)}")
            if exc.hint:
                stderr_line(f"  hint: {clip(exc.hint)}")
            raise typer.Exit(EXIT_USAGE) from None
        except KeyboardInterrupt:
            stderr_line("Error: interrupted; nothing was written")
            raise typer.Exit(130) from None
        except BrokenPipeError:
            # Before typer's own handler (exit 1): see EXIT_PIPE.
            raise typer.Exit(_reader_gone()) from None
        finally:
            _print_notes()

    return wrapper  # type: ignore[return-value]


def _print_notes() -> None:
    from advisor import notes

    for text in notes.take():
        stderr_line(f"note: {text}")


def stderr_line(text: str) -> None:
    """One line on stderr with control characters removed (user text is text)."""
    from advisor.text import plain

    try:
        sys.stderr.write(plain(text) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass  # NOTE: stderr closed or full: nowhere left to say it.


def not_blank(flag: str, value: str | None) -> None:
    """An option given as an empty string is an error, not "not given" (other helpers'
    options can call this too)."""
    if value is not None and not value.strip():
        raise UserError(f"{flag} is empty", f"give {flag} a value, or leave it out")


def user_path(path: Path | str, flag: str) -> Path:
    """A path flag with ``~`` expanded; ``~nosuchuser/...`` is a user error, not a crash."""
    try:
        return Path(path).expanduser()
    except RuntimeError:  # NOTE: Path.expanduser's "Could not determine home directory"
        user = str(path).split("/", 1)[0]
        raise UserError(
            f"{flag} {clip(str(path), 120)!r}: there is no user {user[1:]!r} for {user!r}",
            "write the folder out in full",
        ) from None


def clip(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def print_schema(model: type[Any]) -> None:
    sys.stdout.write(json.dumps(model.model_json_schema(), indent=2) + "\n")


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (stable schema, see --schema).")]
SchemaOpt = Annotated[
    bool, typer.Option("--schema", help="Print the JSON Schema of --json's output and exit.")
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"optadvise {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool | None,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = None,
) -> None:
    """optadvise: ranked, explained training recommendations by measured cost."""


calibrate_app = typer.Typer(
    help="Time short real optimizer, attention and layer steps on this device (cached).",
)
app.add_typer(calibrate_app, name="calibrate")


# The errors of a stdout that cannot take the report: full disk or quota, a closed
# descriptor, an I/O error. (A closed pipe, EPIPE, is EXIT_PIPE's.)
_OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EBADF, errno.EIO})
# NOTE: a closed pipe on stdout (EPIPE: `optadvise taxonomy | head -1`) ends quietly with
# status 141 (128 + SIGPIPE). Issue 25 asks a closed or full stdout for one line on stderr
# and a non-zero exit; we keep the line for a full disk or a closed descriptor (the report
# is lost unasked: _output_failed), but a closed pipe means the reader has what it wanted,
# and the Unix convention is silence: GNU tools die of SIGPIPE without a word, and a line
# after every `| head` would be noise. 141 is what the shell reports for such a tool (`yes
# | head -1` under `set -o pipefail`), so scripts that already accept it from `grep | head`
# accept ours, and it stays apart from 1 (rules check's findings) and 2 (bad input).
EXIT_PIPE = 141


def main() -> None:
    """Console-script entry point."""
    from advisor.shell.bootstrap import pause_cyclic_gc, skip_pydantic_plugins

    # Before typer's parsing builds the first pydantic model: see advisor.shell.bootstrap.
    skip_pydantic_plugins()
    pause_cyclic_gc()
    if sys.stdout is None or not _usable(sys.stdout):
        stderr_line("Error: standard output is closed; nothing can be reported")
        sys.exit(EXIT_USAGE)
    _ascii_fallbacks()
    code: Any = 0
    null_before = _is_devnull(sys.stdout)
    try:
        app()
    except SystemExit as exc:
        code = exc.code
        # rich (every report and typer's help) meets EPIPE itself: it points stdout at
        # /dev/null and exits 1; click wraps stdout in a PacifyFlushWrapper and exits 1.
        # Either way the reader went away: EXIT_PIPE, as for the EPIPE we catch.
        pacified = type(sys.stdout).__name__ == "PacifyFlushWrapper"
        if pacified or (not null_before and _is_devnull(sys.stdout)):
            code = _reader_gone()
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            code = _reader_gone()
        elif exc.errno not in _OUTPUT_ERRNOS:
            raise
        else:
            code = _output_failed(exc)
    try:
        sys.stdout.flush()
    except (OSError, ValueError) as exc:
        code = _reader_gone() if getattr(exc, "errno", None) == errno.EPIPE else _output_failed(exc)
    sys.exit(code)


def _usable(stream: Any) -> bool:
    try:
        os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return True


def _output_failed(exc: Exception) -> int:
    """One line on stderr for a report that could not be written, and a quiet exit (the
    unwritten rest goes nowhere instead of a second error at interpreter exit)."""
    reason = getattr(exc, "strerror", None) or type(exc).__name__
    stderr_line(f"Error: cannot write the output: {reason}")
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    return EXIT_USAGE


def _is_devnull(stream: Any) -> bool:
    """Whether ``stream`` writes to /dev/null (the character device, by its number)."""
    try:
        mine = os.fstat(stream.fileno())
        null = os.stat(os.devnull)
    except (OSError, ValueError, AttributeError):
        return False
    return stat.S_ISCHR(mine.st_mode) and mine.st_rdev == null.st_rdev


def _reader_gone() -> int:
    """A closed pipe on stdout: nothing on stderr, and stdout pointed at /dev/null, so that
    what is still buffered goes nowhere instead of Python's flush at exit printing
    "Exception ignored ... BrokenPipeError" (the Python docs' advice on SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
    return EXIT_PIPE


def _ascii_fallbacks() -> None:
    """On a terminal that cannot show the report's characters (LANG=POSIX, an ASCII
    PYTHONIOENCODING), print ``x`` for ``×``, ``-`` for ``—`` and so on, never a
    UnicodeEncodeError."""
    from advisor.text import register_fallbacks

    for stream in (sys.stdout, sys.stderr):
        encoding = getattr(stream, "encoding", None) or "ascii"
        try:
            "×—…█".encode(encoding)
        except UnicodeEncodeError:
            reconfigure = getattr(stream, "reconfigure", None)
            if reconfigure is not None:
                reconfigure(errors=register_fallbacks())
        except LookupError:
            pass
