"""`gateway`: the command line. `serve` options are also GATEWAY_* variables; `models` is ops."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsError

from gateway import __version__
from gateway.app import stats_view, traffic_cli
from gateway.app.admin_client import (
    AdminClient,
    AdminClientError,
    ServerAnsweredError,
    UnreachableError,
    normalize_url,
)
from gateway.app.heap import tune_garbage_collector
from gateway.app.logs import configure_logging
from gateway.app.scheduling import set_scheduling_policy
from gateway.app.server import StartupError, serve
from gateway.config.settings import GatewaySettings

logger = logging.getLogger("gateway")

DEFAULT_URL = "http://127.0.0.1:8000"
URL_VARIABLE = "GATEWAY_URL"
TOKEN_VARIABLE = "GATEWAY_ADMIN_TOKEN"


class UsageError(Exception):
    """A command line the `models` commands cannot act on (exit status 2)."""


def _without_none(annotation: Any) -> Any:
    """`X | None` -> X; any other annotation as it is."""
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def _add_settings_options(
    parser: argparse.ArgumentParser, settings_type: type[BaseSettings] = GatewaySettings
) -> None:
    """One option per settings field; list fields are repeatable options."""
    for name, field in settings_type.model_fields.items():
        option = "--" + name.replace("_", "-")
        env = "GATEWAY_" + name.upper()
        default = field.get_default(call_default_factory=True)
        annotation = _without_none(field.annotation)
        kwargs: dict[str, Any] = {"dest": name, "default": None}
        repeatable = get_origin(annotation) is list
        said = "repeatable" in (field.description or "").lower()
        if repeatable:
            # Repeated options gather into the list (`--load-model a --load-model b`).
            kwargs["action"] = "append"
            annotation = (get_args(annotation) or (str,))[0]
        kwargs["help"] = (
            f"{field.description}{' Repeatable.' if repeatable and not said else ''} "
            f"[env {env}; default: {default}]"
        )
        if annotation is bool and not repeatable:
            parser.add_argument(option, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        choices = get_args(annotation)
        if choices and all(isinstance(c, str) for c in choices):
            kwargs["choices"] = choices
        parser.add_argument(option, metavar=name.split("_")[-1].upper(), **kwargs)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _common_options() -> argparse.ArgumentParser:
    """--url, --token, --token-file, --timeout, --json: every command that calls the admin API."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        help=f"the gateway's HTTP address [env {URL_VARIABLE}; default: {DEFAULT_URL}]",
    )
    token = common.add_mutually_exclusive_group()
    token.add_argument(
        "--token", help=f"admin token, sent as 'Authorization: Bearer' [env {TOKEN_VARIABLE}]"
    )
    token.add_argument(
        "--token-file",
        type=Path,
        metavar="PATH",
        help="read the admin token from the first line of PATH ('TOKEN' or 'NAME TOKEN')",
    )
    common.add_argument(
        "--timeout",
        dest="timeout_s",
        type=_positive_seconds,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the answer (default: 60)",
    )
    common.add_argument("--json", action="store_true", help="print the server's JSON answer")
    return common


def _add_models_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    models = commands.add_parser(
        "models",
        help="List, load, unload and label the models of a running gateway.",
        description="List, load, unload and label the models of a running gateway over HTTP. "
        "Exit status: 0 done, 1 the server refused, 2 bad usage or no answer.",
    )
    models.set_defaults(models_parser=models)
    actions = models.add_subparsers(dest="models_command", metavar="ACTION")

    def action(name: str, help_text: str) -> Any:
        return actions.add_parser(name, parents=[common], help=help_text, description=help_text)

    listing = action("list", "Every model version with its state (repository index).")
    listing.add_argument("--ready", action="store_true", help="only the READY versions")
    for name, help_text in (
        ("load", "Load a model, or apply its changes on disk."),
        ("reload", "Re-read and swap every version of a model, changed or not."),
    ):
        loading = action(name, help_text)
        loading.add_argument("model", metavar="NAME")
        loading.add_argument(
            "--config",
            metavar="JSON_OR_@FILE",
            help="model configuration as JSON, or @PATH of a file holding it",
        )
        if name == "load":
            loading.add_argument(
                "--reload", action="store_true", help="swap every version even if unchanged"
            )
    for name, help_text, positionals in (
        ("unload", "Stop serving every version of a model.", ["NAME"]),
        ("labels", "Show a model's version labels.", ["NAME"]),
        ("label", "Point LABEL (e.g. stable) at VERSION of a model.", ["NAME", "LABEL", "VERSION"]),
        ("unlabel", "Remove LABEL from a model.", ["NAME", "LABEL"]),
    ):
        command = action(name, help_text)
        for metavar in positionals:
            dest = "model" if metavar == "NAME" else metavar.lower()
            command.add_argument(dest, metavar=metavar)


def build_parser() -> argparse.ArgumentParser:
    serve_parser = argparse.ArgumentParser(
        prog="gateway serve",
        description="Serve every model of a Triton-layout repository over HTTP and gRPC.",
    )
    _add_settings_options(serve_parser)
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="An Open Inference Protocol (KServe V2) gateway for ONNX models.",
        epilog="Options of `gateway serve`:\n"
        + serve_parser.format_help().split("options:", 1)[-1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve_command = commands.add_parser("serve", help=serve_parser.description)
    serve_command.description = serve_parser.description
    _add_settings_options(serve_command)
    common = _common_options()
    _add_models_commands(commands, common)
    traffic_cli.add_commands(commands, common)
    _add_stats_command(commands)
    return parser


def _settings(args: argparse.Namespace) -> GatewaySettings:
    given = {
        name: value
        for name in GatewaySettings.model_fields
        if (value := getattr(args, name, None)) is not None
    }
    return GatewaySettings(**given)


# --- gateway models ---------------------------------------------------------------------------


def read_token_file(path: Path) -> str:
    """The token of the first line that holds one: `TOKEN`, or `NAME TOKEN` as the server reads."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read --token-file {path}: {exc}") from None
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()  # '#' starts a comment, as the server reads it
        if not fields:
            continue
        if len(fields) > 2:
            raise UsageError(f"--token-file {path}: expected 'TOKEN' or 'NAME TOKEN' per line")
        return fields[-1]
    raise UsageError(f"--token-file {path} holds no token")


def read_config(value: str) -> str:
    """`--config`: JSON text, or `@PATH` of a file holding it; checked to be a JSON object."""
    where = "--config"
    if value.startswith("@"):
        where = f"--config file {value[1:]}"
        try:
            value = Path(value[1:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {where}: {exc}") from None
    try:
        document = json.loads(value)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise UsageError(f"{where} must be a JSON object, not {type(document).__name__}")
    return value


def admin_client(args: argparse.Namespace, environ: Mapping[str, str]) -> AdminClient:
    try:
        url = normalize_url(args.url or environ.get(URL_VARIABLE) or DEFAULT_URL)
    except ValueError as exc:
        raise UsageError(f"--url: {exc}") from None
    if args.token:
        token: str | None = args.token
    elif args.token_file is not None:
        token = read_token_file(args.token_file)
    else:
        token = environ.get(TOKEN_VARIABLE) or None
    if token is not None and not (token.isprintable() and token.strip() == token):
        raise UsageError("the admin token holds spaces or control characters")
    return AdminClient(url, token=token, timeout_s=args.timeout_s)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def _versions(values: Any) -> str:
    return ", ".join(str(v) for v in values)


def _index_text(index: Any, args: argparse.Namespace) -> str:
    rows = [
        [
            " ".join(str(entry.get(key, "")).split())
            for key in ("name", "version", "state", "reason")
        ]
        for entry in index
    ]
    return _table(["MODEL", "VERSION", "STATE", "REASON"], rows)


def _load_text(answer: Any, args: argparse.Namespace) -> str:
    done = [
        f"{what} {_versions(answer[what])}"
        for what in ("loaded", "unloaded", "unchanged")
        if answer.get(what)
    ]
    return f"{answer.get('model', args.model)}: {'; '.join(done) or 'no versions changed'}"


def _unload_text(answer: Any, args: argparse.Namespace) -> str:
    unloaded = answer.get("unloaded")
    done = f"unloaded {_versions(unloaded)}" if unloaded else "no versions were loaded"
    return f"{answer.get('model', args.model)}: {done}"


def _labels_text(answer: Any, args: argparse.Namespace) -> str:
    labels = answer.get("labels") or {}
    if not labels:
        return f"{answer.get('model', args.model)}: no labels"
    return _table(["LABEL", "VERSION"], [[str(k), str(v)] for k, v in sorted(labels.items())])


def _config(args: argparse.Namespace) -> str | None:
    return None if args.config is None else read_config(args.config)


Action = Callable[[AdminClient, argparse.Namespace], Any]
Show = Callable[[Any, argparse.Namespace], str]

ACTIONS: dict[str, tuple[Action, Show]] = {
    "list": (lambda c, a: c.repository_index(ready_only=a.ready), _index_text),
    "load": (lambda c, a: c.load(a.model, config=_config(a), reload=a.reload), _load_text),
    "reload": (lambda c, a: c.load(a.model, config=_config(a), reload=True), _load_text),
    "unload": (lambda c, a: c.unload(a.model), _unload_text),
    "labels": (lambda c, a: c.labels(a.model), _labels_text),
    "label": (lambda c, a: c.set_label(a.model, a.label, a.version), _labels_text),
    "unlabel": (lambda c, a: c.remove_label(a.model, a.label), _labels_text),
}


def run_models(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """One `gateway models ACTION`: 0 done, 1 the server refused, 2 bad usage or no answer."""
    if args.models_command is None:
        args.models_parser.print_help(sys.stderr)
        return 2
    call, show = ACTIONS[args.models_command]
    return run_action(args, environ, call, show)


def run_action(
    args: argparse.Namespace, environ: Mapping[str, str], call: Action, show: Show
) -> int:
    """Call the admin API and print its answer: 0 done, 1 refused, 2 bad usage or no answer."""
    try:
        answer = call(admin_client(args, environ), args)
    except (UsageError, UnreachableError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    except ServerAnsweredError as exc:
        print(f"gateway: {exc.status} {exc.message}", file=sys.stderr)
        return 1
    except AdminClientError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    text = None
    if not args.json:
        # An answer of another shape (another server version) is shown as JSON.
        with contextlib.suppress(AttributeError, KeyError, TypeError, ValueError):
            text = show(answer, args)
    print(json.dumps(answer, indent=2) if text is None else text)
    return 0


def _add_stats_command(commands: Any) -> None:
    stats = commands.add_parser(
        "stats",
        help="Per-version requests/s, latency, batch size, errors and accuracy of a running "
        "gateway.",
        description="A table per model version over the last interval, from two scrapes of the "
        "gateway's /metrics: requests/s, p50/p99 latency of successful requests, mean batch "
        "size, error rate, accuracy (feedback), shadow agreement and traffic weight.",
    )
    stats.add_argument("model", nargs="?", help="only this model")
    stats.add_argument(
        "--url",
        help=f"the gateway's HTTP address [env {URL_VARIABLE}; default: {DEFAULT_URL}]",
    )
    stats.add_argument(
        "--interval",
        dest="interval_s",
        type=_positive_seconds,
        default=2.0,
        metavar="SECONDS",
        help="the interval the figures cover, and the refresh period of --watch (default: 2)",
    )
    stats.add_argument(
        "--watch", action="store_true", help="refresh in place like top, until Ctrl-C"
    )
    stats.add_argument("--json", action="store_true", help="print the rows as JSON")
    stats.add_argument(
        "--timeout", dest="timeout_s", type=_positive_seconds, default=10.0, metavar="SECONDS"
    )


def run_stats(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    url = normalize_url(args.url or environ.get(URL_VARIABLE) or DEFAULT_URL)

    def show(table: list[stats_view.Row]) -> None:
        if args.json:
            print(json.dumps([row.__dict__ for row in table]), flush=True)
            return
        clear = "\x1b[H\x1b[2J" if args.watch and sys.stdout.isatty() else ""
        heading = f"{url}  every {args.interval_s:g} s" if args.watch else ""
        print(clear + (heading + "\n" if heading else "") + stats_view.render(table), flush=True)

    try:
        stats_view.watch(
            url, args.model, args.interval_s, args.timeout_s, show, None if args.watch else 1
        )
    except KeyboardInterrupt:
        return 0
    except (OSError, ValueError) as exc:
        print(f"gateway: cannot read {url}/metrics: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "models":
        return run_models(args, os.environ if environ is None else environ)
    if args.command == "stats":
        return run_stats(args, os.environ if environ is None else environ)
    if args.command in traffic_cli.COMMANDS:
        chosen = traffic_cli.chosen(args)
        if chosen is None:
            return 2
        call, show = chosen
        return run_action(args, os.environ if environ is None else environ, call, show)
    try:
        settings = _settings(args)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        print(f"gateway: invalid settings: {problems}", file=sys.stderr)
        return 2
    except SettingsError as exc:  # an environment variable that cannot be parsed
        print(f"gateway: invalid settings: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    tune_garbage_collector(settings.gc_threshold)
    set_scheduling_policy(settings.scheduling_policy)
    try:
        if settings.event_loop == "uvloop":
            import uvloop

            uvloop.run(serve(settings))
        else:
            asyncio.run(serve(settings))
    except StartupError as exc:
        logger.error("cannot start: %s", exc)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
