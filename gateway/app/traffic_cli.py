"""`gateway traffic get|set|clear` and `gateway rollout start|status|abort`: the traffic policy
and progressive rollouts of a running gateway, over its HTTP admin API."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from gateway.app.admin_client import AdminClient

COMMANDS = ("traffic", "rollout")
ENDED = ("promoted", "rolled_back", "aborted")

Action = Callable[[AdminClient, argparse.Namespace], Any]
Show = Callable[[Any, argparse.Namespace], str]


# -- option values ----------------------------------------------------------------------------
def _pairs(text: str, what: str) -> list[tuple[str, str]]:
    pairs = []
    for item in text.split(","):
        version, sep, value = item.strip().partition("=")
        if not sep or not version.strip() or not value.strip():
            raise argparse.ArgumentTypeError(f"{text!r}: expected {what}")
        pairs.append((version.strip(), value.strip()))
    return pairs


def _whole(text: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{where}: {text!r} is not a whole number") from None


def _number(text: str, where: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{where}: {text!r} is not a number") from None


def weights(text: str) -> dict[str, int]:
    """`1=90,2=10` -> {"1": 90, "2": 10}."""
    return {v: _whole(w, f"weight of {v}") for v, w in _pairs(text, "VERSION=WEIGHT,...")}


def shadows(text: str) -> list[dict[str, Any]]:
    """`3=100` (or `3`: 100 percent) -> [{"version": "3", "percent": 100}]."""
    if "=" not in text:
        text = ",".join(f"{v}=100" for v in text.split(","))
    return [
        {"version": v, "percent": _number(p, f"percent of {v}")}
        for v, p in _pairs(text, "VERSION=PERCENT,...")
    ]


def steps(text: str) -> list[int]:
    """`1,5,25,50,100` -> [1, 5, 25, 50, 100]."""
    return [_whole(part.strip(), "--steps") for part in text.split(",")]


def gate(text: str) -> tuple[str, int | float]:
    """`max_p99_ratio=1.5` -> ("max_p99_ratio", 1.5)."""
    ((name, value),) = _pairs(text, "NAME=VALUE")
    return name, _number(value, f"--gate {name}")


def _positive(text: str) -> float:
    value = _number(text, "seconds")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return float(value)


# -- the commands -----------------------------------------------------------------------------
def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    traffic = commands.add_parser(
        "traffic",
        help="Show, set or clear a model's traffic policy (weights, sticky key, shadows).",
        description="A model's traffic policy on a running gateway, over HTTP. Exit status: 0 "
        "done, 1 the server refused, 2 bad usage or no answer.",
    )
    traffic.set_defaults(command_parser=traffic)
    actions = traffic.add_subparsers(dest="traffic_command", metavar="ACTION")
    for name, text in (
        ("get", "The policy and the shadow comparisons so far."),
        ("set", "Replace the policy at once (only READY versions)."),
        ("clear", "Remove the policy: the latest READY version answers."),
    ):
        action = actions.add_parser(name, parents=[common], help=text, description=text)
        action.add_argument("model", metavar="MODEL")
        if name == "set":
            action.add_argument(
                "--weights", type=weights, required=True, metavar="V=W,...", help="e.g. 1=90,2=10"
            )
            action.add_argument("--sticky-key", default="", metavar="KEY", help="e.g. x-user-id")
            action.add_argument(
                "--shadow",
                type=shadows,
                action="append",
                default=[],
                metavar="V=PERCENT",
                help="copy PERCENT of routed requests to version V (repeatable)",
            )

    rollout = commands.add_parser(
        "rollout",
        help="Start, watch or abort a progressive rollout of a model version.",
        description="Progressive rollouts on a running gateway, over HTTP: the candidate takes "
        "each step's share of routed requests and is promoted or rolled back by itself on the "
        "gates. Exit status: 0 done, 1 the server refused, 2 bad usage or no answer.",
    )
    rollout.set_defaults(command_parser=rollout)
    actions = rollout.add_subparsers(dest="rollout_command", metavar="ACTION")
    text = "Start rolling version --to out, step by step."
    begin = actions.add_parser("start", parents=[common], help=text, description=text)
    begin.add_argument("model", metavar="MODEL")
    begin.add_argument("--to", required=True, metavar="VERSION", help="the candidate version")
    begin.add_argument(
        "--from",
        dest="from_version",
        metavar="VERSION",
        help="the stable version (default: the 'stable' label, else the traffic policy's "
        "primary, else the latest other READY version)",
    )
    begin.add_argument("--steps", type=steps, metavar="P,P,...", help="default 1,5,25,50,100")
    begin.add_argument(
        "--interval", dest="step_interval_s", type=_positive, metavar="SECONDS",
        help="the least time a step lasts (default 60)",
    )  # fmt: skip
    begin.add_argument(
        "--min-requests", type=lambda t: _whole(t, "--min-requests"), metavar="N",
        help="candidate requests a step needs before it is judged (default 100)",
    )  # fmt: skip
    begin.add_argument(
        "--shadow-percent", type=lambda t: _number(t, "--shadow-percent"), metavar="P",
        help="stable requests copied to the candidate to compare answers (default 100; 0 off)",
    )  # fmt: skip
    begin.add_argument(
        "--gate", type=gate, action="append", default=[], metavar="NAME=VALUE",
        help="a gate threshold (repeatable): max_error_rate_increase, max_p99_ratio, "
        "min_p99_increase_ms, min_agreement, max_accuracy_drop, min_feedback",
    )  # fmt: skip
    text = "The model's latest rollout: state, step, gates, history."
    status = actions.add_parser("status", parents=[common], help=text, description=text)
    status.add_argument("model", metavar="MODEL")
    status.add_argument(
        "--watch", action="store_true", help="refresh until the rollout ends (or Ctrl-C)"
    )
    status.add_argument(
        "--refresh", dest="refresh_s", type=_positive, default=2.0, metavar="SECONDS",
        help="how often --watch asks (default 2)",
    )  # fmt: skip
    text = "Abort the running rollout: the stable version takes all routed traffic again."
    abort = actions.add_parser("abort", parents=[common], help=text, description=text)
    abort.add_argument("model", metavar="MODEL")


def chosen(args: argparse.Namespace) -> tuple[Action, Show] | None:
    """What `gateway traffic|rollout ACTION` calls and how it shows the answer; None (and the
    help on stderr) without an action."""
    action = getattr(args, f"{args.command}_command", None)
    if action is None:
        args.command_parser.print_help(sys.stderr)
        return None
    return ACTIONS[(args.command, action)]


def _policy(args: argparse.Namespace) -> dict[str, Any]:
    policy: dict[str, Any] = {"weights": args.weights}
    if args.sticky_key:
        policy["sticky_key"] = args.sticky_key
    if args.shadow:
        policy["shadows"] = [item for group in args.shadow for item in group]
    return policy


def _plan(args: argparse.Namespace) -> dict[str, Any]:
    plan: dict[str, Any] = {"to": args.to}
    for key, value in (
        ("from", args.from_version),
        ("steps", args.steps),
        ("step_interval_s", args.step_interval_s),
        ("min_requests", args.min_requests),
        ("shadow_percent", args.shadow_percent),
    ):
        if value is not None:
            plan[key] = value
    if args.gate:
        plan["gates"] = dict(args.gate)
    return plan


def _watch(client: AdminClient, args: argparse.Namespace) -> Any:
    """The rollout, shown every --refresh seconds until it ends; the last answer is returned
    (and shown by the caller)."""
    answer = client.rollout(args.model)
    if not args.watch:
        return answer
    try:
        while answer.get("state") not in ENDED:
            print(_frame(args) + _rollout_text(answer, args), flush=True)
            time.sleep(args.refresh_s)
            answer = client.rollout(args.model)
    except KeyboardInterrupt:
        pass
    return answer


def _frame(args: argparse.Namespace) -> str:
    return "\x1b[H\x1b[2J" if getattr(args, "watch", False) and sys.stdout.isatty() else ""


# -- what is printed --------------------------------------------------------------------------
def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def _traffic_text(answer: Any, args: argparse.Namespace) -> str:
    model = answer.get("model", args.model)
    weights_now: dict[str, int] = answer["weights"]
    if not weights_now:
        lines = [f"{model}: no traffic policy (the latest READY version answers)"]
    else:
        total = sum(weights_now.values()) or 1
        primary = min(weights_now, key=lambda v: (-weights_now[v], int(v)))
        rows = [
            [v, f"{100 * w / total:g}", "primary" if v == primary else "canary"]
            for v, w in sorted(weights_now.items(), key=lambda item: int(item[0]))
        ]
        rows += [[s["version"], "-", f"shadow {s['percent']:g}%"] for s in answer["shadows"]]
        lines = [_table(["VERSION", "WEIGHT%", "ROLE"], rows)]
        if answer.get("sticky_key"):
            lines.append(f"sticky key: {answer['sticky_key']}")
    comparisons = answer.get("comparisons") or []
    if comparisons:
        rows = [
            [
                c["primary"],
                c["shadow"],
                *(str(c[k]) for k in ("agree", "disagree", "error", "dropped")),
                "-" if c["agreement"] is None else f"{c['agreement']:.1%}",
            ]
            for c in comparisons
        ]
        header = ["PRIMARY", "SHADOW", "AGREE", "DISAGREE", "ERROR", "DROPPED", "AGREEMENT"]
        lines += ["", _table(header, rows)]
    return "\n".join(lines)


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def _rollout_text(answer: Any, args: argparse.Namespace) -> str:
    state = answer["state"]
    head = (
        f"{answer['model']}: {state}, step {answer['step']} of {len(answer['steps'])} "
        f"({answer['weight']}% to version {answer['to']} from version {answer['from']})"
    )
    if state in ("running", "holding"):
        head += f", step began {_clock(answer['step_started_at'])}"
    lines = [head, answer["reason"]]
    evaluation = answer.get("evaluation") or []
    if evaluation:
        rows = [[g["gate"], g["verdict"], g["detail"]] for g in evaluation]
        lines += ["", _table(["GATE", "VERDICT", "DETAIL"], rows)]
    history = answer.get("history") or []
    if history:
        lines += ["", "history:"]
        lines += [f"  {_clock(h['at'])}  {h['state']:<11}  {h['reason']}" for h in history]
    return "\n".join(lines)


ACTIONS: dict[tuple[str, str], tuple[Action, Show]] = {
    ("traffic", "get"): (lambda c, a: c.traffic(a.model), _traffic_text),
    ("traffic", "set"): (lambda c, a: c.set_traffic(a.model, _policy(a)), _traffic_text),
    ("traffic", "clear"): (lambda c, a: c.clear_traffic(a.model), _traffic_text),
    ("rollout", "start"): (lambda c, a: c.start_rollout(a.model, _plan(a)), _rollout_text),
    ("rollout", "status"): (_watch, _rollout_text),
    ("rollout", "abort"): (lambda c, a: c.abort_rollout(a.model), _rollout_text),
}
