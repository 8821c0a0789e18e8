"""The `optadvise` command line: parse flags, call the core, render. The only place that exits."""

from __future__ import annotations

import errno
import functools
import itertools
import json
import math
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup

from advisor import __version__
from advisor.errors import EXIT_FINDINGS, EXIT_NOTHING_FITS, EXIT_USAGE, DataError, UserError

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
            _stderr_line(f"Error: {_clip(exc.format_message())}")
            ctx = getattr(exc, "ctx", None)
            where = ctx.command_path if ctx is not None else "optadvise"
            _stderr_line(f"  hint: see `{where} --help`")
            sys.exit(exc.exit_code)
        except Abort:
            _stderr_line("Error: aborted")
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        repeated = _repeated_option(self, ctx, args)
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


def _repeated_option(group: TyperGroup, ctx: typer.Context, args: list[str]) -> str | None:
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


def _rules_dirs(values: list[str] | None) -> list[Path]:
    """The --rules-dir folders: given, existing folders; the files in them that are not
    read (facts and taxonomy are the shipped ones) get a note."""
    from advisor import notes
    from advisor.rules.ruleset import RESERVED_FILES

    dirs: list[Path] = []
    for value in values or []:
        _not_blank("--rules-dir", value)
        d = _user_path(value, "--rules-dir")
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
                _stderr_line(f"Error: {problem}")
            if exc.hint:
                _stderr_line(f"  hint: {exc.hint}")
            raise typer.Exit(EXIT_USAGE) from None
        except UserError as exc:
            # NOTE: one line (the terminal may wrap it), so scripts can grep it; a hostile
            # value echoed in it is cut to a readable length.
            _stderr_line(f"Error: {_clip(exc.message)}")
            if exc.hint:
                _stderr_line(f"  hint: {_clip(exc.hint)}")
            raise typer.Exit(EXIT_USAGE) from None
        except KeyboardInterrupt:
            _stderr_line("Error: interrupted; nothing was written")
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
        _stderr_line(f"note: {text}")


def _stderr_line(text: str) -> None:
    """One line on stderr with control characters removed (user text is text)."""
    from advisor.text import plain

    try:
        sys.stderr.write(plain(text) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass  # NOTE: stderr closed or full: nowhere left to say it.


def _not_blank(flag: str, value: str | None) -> None:
    """An option given as an empty string is an error, not "not given" (other helpers'
    options can call this too)."""
    if value is not None and not value.strip():
        raise UserError(f"{flag} is empty", f"give {flag} a value, or leave it out")


def _user_path(path: Path | str, flag: str) -> Path:
    """A path flag with ``~`` expanded; ``~nosuchuser/...`` is a user error, not a crash."""
    try:
        return Path(path).expanduser()
    except RuntimeError:  # NOTE: Path.expanduser's "Could not determine home directory"
        user = str(path).split("/", 1)[0]
        raise UserError(
            f"{flag} {_clip(str(path), 120)!r}: there is no user {user[1:]!r} for {user!r}",
            "write the folder out in full",
        ) from None


def _clip(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _print_schema(model: type[Any]) -> None:
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


@app.command()
@handle_errors
def probe(
    hardware: Annotated[
        str | None,
        typer.Option(
            "--hardware", help="Show a datasheet profile instead of probing (see `profiles list`)."
        ),
    ] = None,
    no_torch: Annotated[
        bool,
        typer.Option("--no-torch", help="Skip torch (faster): no SDPA, GEMM or torch.cuda facts."),
    ] = False,
    json_out: JsonOpt = False,
    schema: SchemaOpt = False,
) -> None:
    """Report this machine: CPU, memory limits (cgroups), GPUs, and the torch stack."""
    _not_blank("--hardware", hardware)
    from advisor.hardware.profiles import HardwareProfile, ProbeReport

    if schema:
        _print_schema(HardwareProfile if hardware else ProbeReport)
        return
    from advisor.shell import render

    if hardware:
        from advisor.hardware.profiles import get_hardware_profile

        profile = get_hardware_profile(hardware)
        if json_out:
            render.print_json(profile)
        else:
            render.render_hardware_profile(profile)
        return
    from advisor.hardware.probe import probe_hardware

    if json_out:
        render.print_json(probe_hardware(with_torch=not no_torch))
        return
    with render.console.status("Probing hardware…"):
        report = probe_hardware(with_torch=not no_torch)
    render.render_probe(report)


@profiles_app.command("list")
@handle_errors
def profiles_list(json_out: JsonOpt = False) -> None:
    """List the hardware profiles (--hardware) and model profiles (--model)."""
    from advisor.hardware.profiles import load_hardware_profiles
    from advisor.shell import render

    hardware = sorted(load_hardware_profiles().values(), key=lambda p: p.id)
    models = _model_rows()
    if json_out:
        render.print_json(
            {
                "hardware": [p.model_dump(mode="json") for p in hardware],
                "models": [
                    {"id": i, "name": n, "arch": a, "parameters": c} for i, n, a, c in models
                ],
            }
        )
        return
    render.render_profiles(hardware, models)


def _model_rows() -> list[tuple[str, str, str, int]]:
    try:
        from advisor.model import load_model_profiles
    except ImportError:
        return []
    specs = load_model_profiles()
    return [
        (s.id, s.name, s.arch.value, s.parameter_count())
        for s in sorted(specs.values(), key=lambda s: (s.family, s.parameter_count()))
    ]


@app.command()
@handle_errors
def taxonomy(json_out: JsonOpt = False, schema: SchemaOpt = False) -> None:
    """Draw the taxonomy of training techniques: category, order, references."""
    from advisor.rules.taxonomy import Taxonomy, load_taxonomy

    if schema:
        _print_schema(Taxonomy)
        return
    from advisor.shell import render

    tax = load_taxonomy()
    if json_out:
        render.print_json(tax)
    else:
        render.render_taxonomy(tax)


def _load_ruleset(rules_dir: list[str] | None) -> Any:
    from advisor.rules.ruleset import load_rules
    from advisor.rules.taxonomy import load_taxonomy

    return load_rules(_rules_dirs(rules_dir), technique_ids=set(load_taxonomy().ids()))


@rules_app.command("list")
@handle_errors
def rules_list(rules_dir: RulesDirOpt = None, json_out: JsonOpt = False) -> None:
    """List every rule: id, title, actions, file and line."""
    from advisor.shell import render

    ruleset = _load_ruleset(rules_dir)
    if json_out:
        render.print_json([lr for lr in ruleset.rules])
    else:
        render.render_rules_list(ruleset.rules)


@rules_app.command("show")
@handle_errors
def rules_show(
    rule_id: Annotated[str, typer.Argument(help="The rule id (see `optadvise rules list`).")],
    rules_dir: RulesDirOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show one rule: its condition, actions, rationale and sources."""
    import difflib

    from advisor.shell import render

    ruleset = _load_ruleset(rules_dir)
    lr = ruleset.get(rule_id)
    if lr is None:
        close = difflib.get_close_matches(rule_id, [r.rule.id for r in ruleset.rules], n=3)
        raise UserError(
            f"unknown rule {rule_id!r}",
            f"did you mean {', '.join(close)}?" if close else "see `optadvise rules list`",
        )
    if json_out:
        render.print_json(lr)
    else:
        render.render_rule(lr)


@rules_app.command("check")
@handle_errors
def rules_check(
    rules_dir: RulesDirOpt = None, json_out: JsonOpt = False, schema: SchemaOpt = False
) -> None:
    """Prove the rule base consistent: schema, references, dead rules, contradictions,
    infeasible optimizer sets, unreachable techniques, missing rationale or sources.

    Exits 0 when consistent, 1 with the defects otherwise, 2 when a rule file cannot be
    read as YAML at all.
    """
    from advisor.rules.checks import CheckReport, check_rules

    if schema:
        _print_schema(CheckReport)
        return
    from advisor.shell import render

    report = check_rules(_rules_dirs(rules_dir))
    if json_out:
        render.print_json(report)
    else:
        render.render_check(report)
    if not report.ok:
        raise typer.Exit(EXIT_FINDINGS)


# --- model and workload flags shared by estimate, calibrate and recommend ------------------

ModelSizeOpt = Annotated[
    str | None,
    typer.Option(
        "--model-size",
        help="Parameter count such as 125M, 1.3B, 7B, 70B or 1T; resolves to a canonical "
        "decoder shape (see `optadvise profiles list`).",
    ),
]
ModelOpt = Annotated[
    str | None, typer.Option("--model", help="A model profile id, e.g. llama-2-7b.")
]
ModelConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--model-config",
        help="A local Hugging Face config.json. Built-in readers: model_type bert, "
        "deepseek_v3, gemma2, gemma3, gemma3_text, gpt2, llama, mistral, mixtral, olmo2, opt, "
        "phi3, qwen2, qwen3, qwen3_moe; any other type transformers can build is read from its "
        "modules on the meta device (pip install 'optadvise[hf]').",
    ),
]


RopeScalingOpt = Annotated[
    float | None,
    typer.Option(
        "--rope-scaling",
        help="The RoPE scaling factor the run extends the model's context with (position "
        "interpolation, YaRN): allows --seq-len up to the context times this.",
    ),
]


def _resolve_model(model_size: str | None, model: str | None, model_config: Path | None) -> Any:
    """The model the flags name (default 7B), bounded (see advisor.app.limits)."""
    from advisor.app.limits import MIN_PARAMETERS, check_bound, check_model
    from advisor.model import get_model_profile, resolve_model_size
    from advisor.units import parse_count

    given = [
        n
        for n, v in (
            ("--model-size", model_size),
            ("--model", model),
            ("--model-config", model_config),
        )
        if v is not None
    ]
    if len(given) > 1:
        raise UserError(f"{' and '.join(given)} both name a model", "give only one of them")
    if model_config is not None:
        spec = _load_model_config(model_config)
    elif model is not None:
        spec = get_model_profile(model)
    else:
        text = "7B" if model_size is None else model_size
        count = parse_count(text)
        if count < MIN_PARAMETERS and text.strip()[-1:].isdigit():
            raise UserError(
                f"--model-size {text!r} is {count:,} parameters",
                f"a size needs its suffix: did you mean {text.strip()}B? (K, M, B or T)",
            )
        check_bound("--model-size", count)
        spec = resolve_model_size(text)
        if count < spec.parameter_count() / 1.25:
            from advisor import notes

            notes.post(
                f"--model-size {text}: planning with {spec.name}'s shape "
                f"({spec.parameter_count() / 1e6:.0f}M parameters), the smallest profile; "
                "its memory and time over-estimate a smaller model (--model-config gives "
                "the exact shape)"
            )
    check_model(spec)
    return spec


# NOTE: a config.json is a few KB (with a label map, a few hundred KB); these limits only
# stop hostile files from costing memory or recursion before they are reported.
_CONFIG_MAX_BYTES = 8 * 1024**2
_CONFIG_MAX_DEPTH = 32
_CONFIG_MAX_NUMBER = 10.0**15


def _load_model_config(path: Path) -> Any:
    """Read a Hugging Face config.json defensively, then hand it to the family readers.

    Hostile or broken files (empty, binary, a byte-order mark, deep nesting, NaN or
    Infinity, numbers too large for any shape, wrong types) are user errors, one line each.
    """
    from advisor.data.safeio import describe, read_bounded
    from advisor.model.hfmeta import spec_from_any_config

    p = _user_path(path, "--model-config")
    hint = "pass a Hugging Face config.json (or the model folder holding it)"
    try:
        if p.is_dir():
            p = p / "config.json"
        # NOTE: opened once and checked as opened (regular file, size): a FIFO or device
        # is refused, and a file swapped in after a check cannot skip the checks below.
        data = read_bounded(p, _CONFIG_MAX_BYTES)
    except FileNotFoundError:
        raise UserError(f"model config {str(p)!r} not found", hint) from None
    except OSError as exc:
        raise UserError(f"cannot read model config {str(p)!r}: {describe(exc)}", hint) from None
    if not data.strip():
        raise UserError(f"model config {str(p)!r} is empty", hint)
    if data.startswith(b"\xef\xbb\xbf"):
        raise UserError(
            f"model config {str(p)!r} starts with a byte-order mark",
            "save it as UTF-8 without a BOM (JSON text must not start with one, RFC 8259)",
        )
    if b"\x00" in data:
        raise UserError(f"model config {str(p)!r} is binary, not JSON text", hint)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"model config {str(p)!r} is not UTF-8 text (byte {exc.start})", hint
        ) from None

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    def finite(literal: str) -> float:
        value = float(literal)
        if not math.isfinite(value):
            raise ValueError(f"{literal} overflows a float")
        return value

    def bounded_int(literal: str) -> int:
        if len(literal.lstrip("-")) > 30:
            raise ValueError(f"an integer of {len(literal)} digits is too large")
        return int(literal)

    try:
        cfg = json.loads(
            text, parse_constant=no_constant, parse_float=finite, parse_int=bounded_int
        )
    except RecursionError:
        raise UserError(f"{p}: JSON nested too deeply", hint) from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, a huge number
        msg = " ".join(str(exc).split())[:200]
        raise UserError(f"{p}: invalid JSON: {msg}", "config.json must be a JSON object") from None
    problem = _hostile_json(cfg)
    if problem:
        raise UserError(f"{p}: {problem}", hint)
    try:
        return spec_from_any_config(cfg, p)
    # NOTE: the family readers do arithmetic on fields before the shape is validated (e.g.
    # 4 x n_embd); a field of the wrong type that gets that far is the file's error.
    except (TypeError, ValueError, OverflowError, ZeroDivisionError, KeyError) as exc:
        msg = " ".join(str(exc).split())[:200]
        raise UserError(f"{p}: not a usable model config: {msg}", hint) from None


def _hostile_json(cfg: Any) -> str | None:
    """Why a parsed config cannot describe a model (nesting, magnitudes), or None."""
    if not isinstance(cfg, dict):
        return f"expected a JSON object, got {type(cfg).__name__}"
    stack: list[tuple[Any, int, str]] = [(cfg, 1, "")]
    while stack:
        node, depth, where = stack.pop()
        if depth > _CONFIG_MAX_DEPTH:
            return f"nested more than {_CONFIG_MAX_DEPTH} levels deep (at {where or 'top'})"
        if isinstance(node, dict):
            stack.extend(
                (v, depth + 1, f"{where}.{k}" if where else str(k)) for k, v in node.items()
            )
        elif isinstance(node, list):
            stack.extend((v, depth + 1, f"{where}[{i}]") for i, v in enumerate(node))
        elif (
            isinstance(node, int | float)
            and not isinstance(node, bool)
            and abs(node) > _CONFIG_MAX_NUMBER
        ):
            return f"{where}: {node:.3g} is too large for any model field"
    return None


@app.command()
@handle_errors
def estimate(
    model_size: ModelSizeOpt = None,
    model: ModelOpt = None,
    model_config: ModelConfigOpt = None,
    task: Annotated[
        str, typer.Option("--task", help="pretrain, finetune, lora or qlora.")
    ] = "finetune",
    optimizer: Annotated[
        str, typer.Option("--optimizer", help="A taxonomy optimizer id.")
    ] = "adamw",
    precision: Annotated[
        str | None,
        typer.Option(
            "--precision",
            help="fp32, tf32, amp-fp16, amp-bf16 (autocast), fp16-mixed, bf16-mixed "
            "(16-bit weights + fp32 master), fp16, bf16 (all 16-bit), fp8-mixed. Default: "
            "bf16-mixed, or fp16-mixed on a GPU without bf16.",
        ),
    ] = None,
    attention: Annotated[
        str | None,
        typer.Option(
            "--attention",
            help="eager, mem-efficient or flash (default; mem-efficient on a GPU without it).",
        ),
    ] = None,
    checkpointing: Annotated[
        str,
        typer.Option(
            "--checkpointing",
            help="none; selective (recompute the attention core, Korthikanti et al. 2022); "
            "selective-layer (torchtitan: full checkpointing of every --ac-frequency-th "
            "block); selective-op (torchtitan: keep every other matmul's and the attention "
            "kernel's outputs, recompute the rest); full.",
        ),
    ] = "none",
    ac_frequency: Annotated[
        int | None,
        typer.Option(
            "--ac-frequency",
            help="With --checkpointing selective-layer: checkpoint every n-th block "
            "(default 2; torchtitan's selective_ac_option).",
        ),
    ] = None,
    micro_batch: Annotated[
        int, typer.Option("--micro-batch", help="Samples per device per pass.")
    ] = 1,
    seq_len: Annotated[
        str | None,
        typer.Option(
            "--seq-len",
            help="Tokens per sample, e.g. 2048 or 4k (default: 2048, capped by the model).",
        ),
    ] = None,
    rope_scaling: RopeScalingOpt = None,
    gpus: Annotated[int, typer.Option("--gpus", help="Data-parallel degree.")] = 1,
    sharding: Annotated[
        str, typer.Option("--sharding", help="none, zero1, zero2, zero3, fsdp or hsdp.")
    ] = "none",
    offload: Annotated[
        str,
        typer.Option(
            "--offload",
            help="none, optimizer, optimizer+params (host RAM), optimizer-nvme or "
            "optimizer+params-nvme.",
        ),
    ] = "none",
    lora_rank: Annotated[
        int | None, typer.Option("--lora-rank", help="LoRA/QLoRA rank (default 16).")
    ] = None,
    dropout: Annotated[
        bool,
        typer.Option(
            "--dropout",
            help="The model's own dropout is on (BERT, GPT-2 and OPT publish 0.1): its masks, "
            "and the dropped attention probabilities under eager attention.",
        ),
    ] = False,
    lora_dropout: Annotated[
        float,
        typer.Option(
            "--lora-dropout",
            help="PEFT's lora_dropout (0 by default): above 0 every adapter keeps its own "
            "dropped-out input and mask.",
        ),
    ] = 0.0,
    optimizer_impl: Annotated[
        str,
        typer.Option(
            "--optimizer-impl",
            help="How the step runs: auto (fused where the optimizer has a fused kernel, as "
            "Hugging Face's Trainer and torchtitan run AdamW), fused or foreach (one "
            "parameter-sized temporary).",
        ),
    ] = "auto",
    lora_targets: Annotated[
        str | None,
        typer.Option(
            "--lora-targets",
            help="What LoRA/QLoRA adapts: attention (q,k,v,o; the default), mlp, all-linear "
            "(PEFT's) or a comma list of q,k,v,o,gate,up,down, plus embed/lm_head to train "
            "them in full.",
        ),
    ] = None,
    dp_sgd: Annotated[
        bool, typer.Option("--dp-sgd", help="Per-sample gradients (DP-SGD).")
    ] = False,
    stack: Annotated[
        str,
        typer.Option(
            "--stack",
            help="Kernel stack the memory assumes: hf (Hugging Face modules, the default) or "
            "fused (FlashAttention, fused norms and cross-entropy, as torchtitan/Megatron).",
        ),
    ] = "hf",
    fused_loss: Annotated[
        bool,
        typer.Option("--fused-loss", help="A fused linear cross-entropy (Liger): no logits."),
    ] = False,
    fused_norm: Annotated[
        bool,
        typer.Option(
            "--fused-norm",
            help="Fused RMSNorm/LayerNorm kernels on the hf stack (torchtitan fused_rmsnorm, "
            "Liger): keep the input and fp32 row statistics only.",
        ),
    ] = False,
    grad_accumulation: Annotated[
        int, typer.Option("--grad-accumulation", help="Micro-batches per optimizer step.")
    ] = 1,
    tensor_parallel: Annotated[
        int, typer.Option("--tensor-parallel", help="Tensor(+sequence)-parallel degree.")
    ] = 1,
    pipeline_parallel: Annotated[
        int, typer.Option("--pipeline-parallel", help="Pipeline stages (1F1B).")
    ] = 1,
    virtual_stages: Annotated[
        int, typer.Option("--virtual-stages", help="Interleaved model chunks per stage.")
    ] = 1,
    expert_parallel: Annotated[
        int, typer.Option("--expert-parallel", help="Expert-parallel degree (MoE).")
    ] = 1,
    optimizer_in_backward: Annotated[
        bool,
        typer.Option("--optimizer-in-backward", help="Per-layer updates during backward."),
    ] = False,
    activation_offload: Annotated[
        bool, typer.Option("--activation-offload", help="Saved activations in host memory.")
    ] = False,
    hardware: Annotated[
        str | None,
        typer.Option("--hardware", help="Profile for the fit check and the analytic step time."),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            "--device",
            help="cuda (context + allocator overheads) or cpu (none). Default: the --hardware "
            "profile's kind, else this machine's device (probed).",
        ),
    ] = None,
    json_out: JsonOpt = False,
    schema: SchemaOpt = False,
) -> None:
    """Estimate the per-device peak memory of one explicit training configuration."""
    _not_blank("--hardware", hardware)
    from advisor.app.estimate import EstimateReport, build_config, estimate_report

    if schema:
        _print_schema(EstimateReport)
        return
    from advisor.app.limits import check_bound, resolve_seq_len
    from advisor.shell import render

    spec = _resolve_model(model_size, model, model_config)
    if lora_rank is not None and task not in ("lora", "qlora"):
        raise UserError(
            f"--lora-rank applies to --task lora or qlora, not {task!r}", "drop --lora-rank"
        )
    if virtual_stages != 1 and pipeline_parallel == 1:
        raise UserError(
            "--virtual-stages interleaves pipeline stages, but --pipeline-parallel is 1",
            "give --pipeline-parallel 2 or more, or drop --virtual-stages",
        )
    for flag, value in (
        ("--micro-batch", micro_batch),
        ("--gpus", gpus),
        ("--lora-rank", lora_rank),
        ("--grad-accumulation", grad_accumulation),
        ("--tensor-parallel", tensor_parallel),
        ("--pipeline-parallel", pipeline_parallel),
        ("--virtual-stages", virtual_stages),
        ("--expert-parallel", expert_parallel),
    ):
        check_bound(flag, value)
    check_bound("world size", gpus * tensor_parallel * pipeline_parallel)
    settings: dict[str, Any] = dict(
        task=task,
        optimizer=optimizer,
        precision=precision or "bf16-mixed",
        attention=attention or "flash",
        checkpointing=checkpointing,
        ac_frequency=ac_frequency,
        micro_batch=micro_batch,
        seq_len=resolve_seq_len(spec, seq_len, rope_scaling),
        gpus=gpus,
        sharding=sharding,
        offload=offload,
        lora_rank=16 if lora_rank is None else lora_rank,
        lora_targets=lora_targets,
        lora_dropout=lora_dropout,
        dropout=dropout,
        optimizer_impl=optimizer_impl,
        dp_sgd=dp_sgd,
        stack=stack,
        fused_loss=fused_loss,
        fused_norm=fused_norm,
        grad_accumulation=grad_accumulation,
        tensor_parallel=tensor_parallel,
        pipeline_parallel=pipeline_parallel,
        virtual_stages=virtual_stages,
        expert_parallel=expert_parallel,
        optimizer_in_backward=optimizer_in_backward,
        activation_offload=activation_offload,
    )
    config = build_config(**settings)
    check_bound("--ac-frequency", ac_frequency)  # after build_config's own n >= 1 check
    import psutil

    from advisor.app.recommend import local_step_time, local_target

    local = None if hardware else local_target()
    # NOTE: the defaults follow the device: a GPU below compute capability 8 (a T4, a V100)
    # has no bf16 and no FlashAttention kernel, so fp16-mixed and the memory-efficient
    # kernel stand in for the flags not given; what was given is checked as given.
    last: UserError | None = None
    for prec, attn in itertools.product(
        [precision] if precision else ["bf16-mixed", "fp16-mixed"],
        [attention] if attention else ["flash", "mem-efficient"],
    ):
        config = build_config(**{**settings, "precision": prec, "attention": attn})
        try:
            _check_estimate_device(config, hardware, device, local)
        except UserError as exc:
            last = exc  # NOTE: the last try keeps the fewest defaults: its error is the user's
            continue
        if (prec, attn) != (precision or "bf16-mixed", attention or "flash"):
            from advisor import notes

            notes.post(
                f"defaults for this device: --precision {prec} --attention {attn} (no bf16 "
                "or FlashAttention below compute capability 8)"
            )
        break
    else:
        assert last is not None
        raise last
    if device is None:
        # NOTE: a CPU profile or this CPU-only machine has no CUDA context to count.
        device = "cpu" if local is not None and local[0].device_kind.value == "cpu" else "cuda"
    report = estimate_report(
        spec,
        config,
        hardware=hardware,
        device=device,
        host_memory_bytes=None if hardware else psutil.virtual_memory().total,
        step_time=local_step_time(spec, config, hardware, local),
        local_device=(
            (f"{local[0].name} (probe)", local[0].device_memory_bytes) if local else None
        ),
    )
    if json_out:
        render.print_json(report)
    else:
        render.render_estimate(report)


def _check_estimate_device(
    config: Any, hardware: str | None, device: str | None, local: Any
) -> None:
    """Refuse what the device cannot run, as `recommend` does: an --device that contradicts
    the --hardware profile, and techniques the device lacks (fp8 on a T4, QLoRA on a CPU)."""
    from advisor.app.estimate import check_hardware_support

    if hardware:
        from advisor.hardware.profiles import get_hardware_profile

        profile = get_hardware_profile(hardware)
        kind = profile.kind.value
        if device is not None and device != kind:
            raise UserError(
                f"--device {device} contradicts --hardware {hardware}, a {kind} device",
                "drop --device: the profile's kind sets it",
            )
        check_hardware_support(
            config,
            device_kind=kind,
            compute_capability=profile.cc or None,
            where=f"the {hardware} profile",
        )
        return
    target = local[0]
    probed = target.device_kind.value
    # NOTE: --device cuda on a machine without a GPU is a what-if: only the kind is checked.
    kind = device or probed
    cc = target.compute_capability or None if kind == probed else None
    check_hardware_support(
        config,
        device_kind=kind,
        compute_capability=cc,
        where="this machine" if kind == probed else f"--device {device}",
    )


@app.command()
@handle_errors
def recommend(
    model_size: ModelSizeOpt = None,
    model: ModelOpt = None,
    model_config: ModelConfigOpt = None,
    task: Annotated[
        str, typer.Option("--task", help="pretrain, finetune (default), lora or qlora.")
    ] = "finetune",
    seq_len: Annotated[
        str | None,
        typer.Option("--seq-len", help="Tokens per sample (default: 2048, capped by the model)."),
    ] = None,
    stack: Annotated[
        str,
        typer.Option(
            "--stack",
            help="Kernel stack: hf (Hugging Face modules, the default) or fused "
            "(FlashAttention, fused norms and cross-entropy, as torchtitan/Megatron).",
        ),
    ] = "hf",
    rope_scaling: RopeScalingOpt = None,
    micro_batch: Annotated[
        int | None,
        typer.Option("--micro-batch", help="Samples per device per pass (default: searched)."),
    ] = None,
    global_batch: Annotated[
        int | None,
        typer.Option(
            "--global-batch",
            help="Samples per optimizer step (default: a published batch for the task and size).",
        ),
    ] = None,
    global_batch_tokens: Annotated[
        str | None,
        typer.Option("--global-batch-tokens", help="Tokens per optimizer step, e.g. 4M or 512k."),
    ] = None,
    host_memory: Annotated[
        str | None,
        typer.Option("--host-memory", help="Host RAM of each node, e.g. 1TiB (offload plans)."),
    ] = None,
    nvme: Annotated[
        str | None, typer.Option("--nvme", help="NVMe of each node for offload, e.g. 4TB.")
    ] = None,
    tp: Annotated[int | None, typer.Option("--tp", help="Pin the tensor-parallel degree.")] = None,
    pp: Annotated[
        int | None, typer.Option("--pp", help="Pin the pipeline-parallel degree.")
    ] = None,
    hardware: Annotated[
        str | None,
        typer.Option(
            "--hardware", help="Plan for a profile instead of this machine (profiles list)."
        ),
    ] = None,
    gpus: Annotated[
        int | None, typer.Option("--gpus", help="Devices per node (default: all local GPUs, or 1).")
    ] = None,
    nodes: Annotated[int, typer.Option("--nodes", help="Machines.")] = 1,
    memory_budget: Annotated[
        str | None,
        typer.Option("--memory-budget", help="Device memory to plan with, e.g. 24GB (overrides)."),
    ] = None,
    objective: Annotated[
        str,
        typer.Option(
            "--objective",
            help="speed (step time), memory, balanced (default), quality or time-to-target "
            "(steps to AdamW's loss x step time).",
        ),
    ] = "balanced",
    privacy: Annotated[str, typer.Option("--privacy", help="none or dp (DP-SGD).")] = "none",
    lora_targets: Annotated[
        str | None,
        typer.Option(
            "--lora-targets",
            help="What LoRA/QLoRA plans adapt: attention (the default), mlp, all-linear or a "
            "comma list (see estimate --help).",
        ),
    ] = None,
    sparse_features: Annotated[
        bool, typer.Option("--sparse-features", help="The model learns sparse features.")
    ] = False,
    top: Annotated[int, typer.Option("--top", help="How many configurations to show.")] = 5,
    calibrate: Annotated[
        bool | None,
        typer.Option(
            "--calibrate/--no-calibrate",
            help="Rank by cost measured on this device (the default without --hardware): the "
            "quick calibration runs first when the cache lacks the model's layer shape. "
            "--no-calibrate: never touch torch; analytic costs.",
        ),
    ] = None,
    explain: Annotated[bool, typer.Option("--explain", help="Show every rule that fired.")] = False,
    emit: Annotated[
        str | None,
        typer.Option(
            "--emit",
            help="Write the first pick as deepspeed, accelerate, torch, torchtitan or "
            "megatron config.",
        ),
    ] = None,
    out: Annotated[
        str | None, typer.Option("--out", help="Folder for --emit (default: optadvise-out).")
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="With --emit: replace a file that exists, and write the nearest plan the "
            "engine can express when its file cannot set up the ranked plan (refused otherwise).",
        ),
    ] = False,
    show_rejected: Annotated[
        bool,
        typer.Option(
            "--show-rejected", help="List every rejected configuration with its reason (--json)."
        ),
    ] = False,
    rules_dir: RulesDirOpt = None,
    json_out: JsonOpt = False,
    schema: SchemaOpt = False,
) -> None:
    """Recommend how to train: ranked configurations with reasons, by measured cost.

    Exit status: 0 a plan fits, 2 bad input, 3 nothing fits (the report still prints, with
    suggestions; --json says "fits": false).
    """
    _not_blank("--hardware", hardware)
    from advisor.plan import RecommendReport

    if schema:
        _print_schema(RecommendReport)
        return
    from advisor.app.limits import check_bound
    from advisor.app.recommend import RecommendRequest, run_recommend

    for flag, pinned in (("--tp", tp), ("--pp", pp)):
        check_bound(flag, pinned)
    emit_kinds = ("deepspeed", "accelerate", "torch", "torchtitan", "megatron")
    if emit is not None and emit not in emit_kinds:
        raise UserError(f"invalid --emit {emit!r}", f"use {', '.join(emit_kinds)}")
    if emit is None and (out is not None or force):
        given = "--out" if out is not None else "--force"
        raise UserError(f"{given} applies to --emit, which is not given", f"drop {given}")
    _not_blank("--out", out)
    spec = _resolve_model(model_size, model, model_config)
    request = RecommendRequest.from_flags(
        spec=spec,
        task=task,
        seq_len=seq_len,
        micro_batch=micro_batch,
        global_batch=global_batch,
        hardware=hardware,
        gpus=gpus,
        nodes=nodes,
        memory_budget=memory_budget,
        objective=objective,
        privacy=privacy,
        sparse_features=sparse_features,
        top=top,
        calibrate=calibrate,
        stack=stack,
        rope_scaling=rope_scaling,
        global_batch_tokens=global_batch_tokens,
        host_memory=host_memory,
        nvme=nvme,
        tp=tp,
        pp=pp,
        lora_targets=lora_targets,
    )
    if rules_dir:
        request = request.model_copy(update={"rules_dirs": _rules_dirs(rules_dir)})
    if calibrate is False or hardware is not None:
        # NOTE: analytic costs: no calibration runs, so there is no progress bar or note to
        # show, and the terminal renderer (rich) loads only to print the report (never for
        # --json). That is ~25 ms of start-up.
        report = run_recommend(request)
    else:
        from advisor.shell import render

        with render.calibration_progress(enabled=not json_out) as progress:
            report = run_recommend(request, progress=progress, notify=render.note)
    if report.hardware.device_kind == "cpu":
        from advisor import notes as user_notes

        for flag, value in (("--host-memory", host_memory), ("--nvme", nvme)):
            if value is not None:
                user_notes.post(
                    f"{flag} is not used: it sizes offload from a GPU to its host, and this "
                    "plan runs on a CPU"
                )
    if emit is not None and report.fits:
        from advisor.app.recommend import write_emitted

        path, notes = write_emitted(
            report,
            emit,
            _user_path(out or "optadvise-out", "--out"),
            nodes=nodes,
            spec=spec,
            hardware=hardware,
            force=force,
        )
        if not json_out:
            from advisor.shell import render

            render.console.print(f"wrote {render.safe(path)}", soft_wrap=True)
            for note in notes:
                render.console.print(f"  note: {render.safe(note)}")
    if json_out:
        from advisor.shell.jsonout import print_json

        print_json(report if show_rejected else report.model_copy(update={"rejected": []}))
    else:
        from advisor.shell import render

        render.render_recommend(report, explain=explain)
    if not report.fits:
        if emit is not None:
            typer.echo(f"nothing fits: no {emit} file written", err=True)
        raise typer.Exit(EXIT_NOTHING_FITS)


calibrate_app = typer.Typer(
    help="Time short real optimizer, attention and layer steps on this device (cached).",
)
app.add_typer(calibrate_app, name="calibrate")


@calibrate_app.callback(invoke_without_command=True)
@handle_errors
def calibrate(
    ctx: typer.Context,
    full: Annotated[
        bool,
        typer.Option(
            "--full/--quick",
            help="--quick (default): a representative subset, about a minute; --full: every "
            "optimizer, longer sequences, all-reduce bandwidth.",
        ),
    ] = False,
    device: Annotated[
        str | None,
        typer.Option("--device", help="cpu, cuda:N or mps (default: the GPU if any, else cpu)."),
    ] = None,
    model_size: ModelSizeOpt = None,
    model: ModelOpt = None,
    model_config: ModelConfigOpt = None,
    budget: Annotated[
        float | None,
        typer.Option(
            "--budget",
            help="Stop after this many seconds; keep partial results (quick default: 120).",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Measure again even if cached.")] = False,
    convergence: Annotated[
        bool,
        typer.Option(
            "--convergence",
            help="Instead of timing steps, train a tiny proxy of the model's family with each "
            "optimizer (short LR sweep, fixed steps) and measure steps to AdamW's loss "
            "(default budget 180 s).",
        ),
    ] = False,
    json_out: JsonOpt = False,
    schema: SchemaOpt = False,
) -> None:
    """Measure this device for a model's layer shape (default: 125M) and cache the results."""
    if ctx.invoked_subcommand is not None:
        return
    if convergence:
        _calibrate_convergence(model_size, model, model_config, device, budget, force, json_out)
        return
    from advisor.cost.data import CalibrationCache

    if schema:
        _print_schema(CalibrationCache)
        return
    from advisor.app.limits import check_bound

    check_bound("--budget", budget)
    from advisor.calibration.runner import run_calibration
    from advisor.shell import render

    spec = _resolve_model(
        model_size
        if model_size is not None or model is not None or model_config is not None
        else "125M",
        model,
        model_config,
    )
    _check_device_flag(device)
    if device is None:
        device = _default_device()
    with render.calibration_progress(enabled=not json_out) as progress:
        cache = run_calibration(
            spec,
            device=device,
            mode="full" if full else "quick",
            budget_s=budget,
            force=force,
            progress=progress,
            say=render.note,
        )
    if json_out:
        render.print_json(cache)
    else:
        render.render_calibration(cache, spec_key=_shape_key(spec))


def _calibrate_convergence(
    model_size: str | None,
    model: str | None,
    model_config: Path | None,
    device: str | None,
    budget: float | None,
    force: bool,
    json_out: bool,
) -> None:
    """`calibrate --convergence`: the measured proxy of steps to AdamW's loss."""
    import time

    from advisor.app.limits import check_bound

    check_bound("--budget", budget)
    _check_device_flag(device)
    from advisor.calibration.convergence import (
        cache_file,
        family_key,
        missing_packages,
        run_convergence,
    )
    from advisor.shell import render

    spec = _resolve_model(
        model_size if model_size is not None or model or model_config else "125M",
        model,
        model_config,
    )
    skipped = missing_packages()
    if skipped:
        render.note(
            f"pytorch-optimizer is not installed: {', '.join(skipped)} will not be measured "
            "(pip install 'optadvise[optimizers]')"
        )
    path = cache_file(device or "cpu", family_key(spec))
    started = time.time()
    try:
        with render.calibration_progress(enabled=not json_out) as progress:
            cache = run_convergence(
                spec, device=device or "cpu", budget_s=budget, force=force, progress=progress
            )
    except KeyboardInterrupt:
        try:
            written = path.stat().st_mtime >= started - 1
        except OSError:
            written = False
        _stderr_line(
            f"interrupted: the runs finished so far are kept in {path}"
            if written
            else "interrupted before the first run finished: nothing was written"
        )
        raise typer.Exit(130) from None
    if json_out:
        render.print_json(cache)
    else:
        render.render_convergence(cache)


def _check_device_flag(device: str | None) -> None:
    """--device names cpu, mps or cuda[:N]; whether that device exists is checked with torch."""
    import re

    _not_blank("--device", device)
    if device is not None and not re.fullmatch(r"cpu|mps|cuda(:\d{1,3})?", device):
        raise UserError(f"invalid --device {_clip(device, 60)!r}", "use cpu, cuda:N or mps")


def _default_device() -> str:
    """The first GPU when torch sees one, Apple MPS when present, else the CPU."""
    from advisor.torchload import import_torch

    torch = import_torch()
    if torch.cuda.is_available():
        return "cuda:0"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def _shape_key(spec: Any) -> str:
    from advisor.cost import layer_shape

    return str(layer_shape(spec).key())


@calibrate_app.command("show")
@handle_errors
def calibrate_show(json_out: JsonOpt = False) -> None:
    """Show what is cached: one file per device fingerprint."""
    from advisor.calibration.cache import cache_dir, list_caches
    from advisor.shell import render

    caches = list_caches()
    if json_out:
        render.print_json(
            {
                "cache_dir": str(cache_dir()),
                "caches": [
                    {"path": str(p), "cache": c.model_dump(mode="json") if c else None, "error": e}
                    for p, c, e in caches
                ],
            }
        )
        return
    if not caches:
        render.console.print(
            f"no calibration cached in {render.safe(cache_dir())}; run `optadvise calibrate`"
        )
        return
    for path, cache, error in caches:
        render.console.print(f"[bold]{render.safe(path)}[/]")
        if cache is None:
            render.console.print(
                f"  [red]{render.safe(error)}[/]; the next calibration rebuilds it"
            )
        else:
            render.render_calibration(cache)


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
        _stderr_line("Error: standard output is closed; nothing can be reported")
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
    _stderr_line(f"Error: cannot write the output: {reason}")
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


if __name__ == "__main__":
    main()
