"""`surgflow models architectures|list|show|gate|promote|rollback|history|verify` (SPEC §7):
what can be built, and the registered chains with their stage pointers and seals."""

from __future__ import annotations

import getpass
import socket

import typer
from rich.table import Table

from surgflow.cli.common import JsonOption, emit, handle_errors, log, render_auto, stdout_console
from surgflow.registry import ModelRegistry, parse_ref

app = typer.Typer(help="Model architectures, registered chains, stage pointers and seals.",
                  no_args_is_help=True)


def registry() -> ModelRegistry:
    return ModelRegistry()


def who() -> str:
    """Who moves a pointer from this command line, as the history records it."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@app.command("architectures")
@handle_errors
def architectures(json_: bool = JsonOption):
    """Architectures a recipe may name: clip/frame models (stage 1) and temporal models."""
    from surgflow.training.models import architectures as rows

    emit(rows(), json_)


@app.command("list")
@handle_errors
def list_versions(
    name: str | None = typer.Argument(None, help="A model name, e.g. cholecystectomy-phase."),
    json_: bool = JsonOption,
):
    """Registered versions, by model then version, with their stages and verdicts."""
    emit([v.summary() for v in registry().list(name)], json_, _render_list)


@app.command("show")
@handle_errors
def show(
    ref: str = typer.Argument(..., metavar="NAME@VERSION",
                              help="A version number or candidate / approved / production."),
    json_: bool = JsonOption,
):
    """One version: its stages, recipe, dataset versions, metrics, artifacts and seal.

    Stages are where surgflow's history puts them; an MLflow alias that disagrees is listed
    under alias_drift (and never served)."""
    name, version = parse_ref(ref)
    reg = registry()
    doc = reg.get(name, version).show()
    doc["alias_drift"] = reg.alias_drift(name)
    for d in doc["alias_drift"]:
        log.warning("%s: %s; surgflow's history has %s at %s (run `surgflow models verify "
                    "%s`; promoting that version again puts the alias back)", name,
                    d["reason"], d["stage"], _v(d["history"]), name)
    emit(doc, json_, _render_show)


@app.command("gate")
@handle_errors
def gate(
    ref: str = typer.Argument(..., metavar="NAME@VERSION"),
    json_: bool = JsonOption,
):
    """Evaluate a version on the field suite against production and seal the verdict.

    Returns the existing seal for the same baseline and field suite; exits 0 whatever the
    verdict."""
    from surgflow.evaluation.gate import gate_version

    name, version = parse_ref(ref)
    reg = registry()
    seal = dict(gate_version(reg, name, reg.get(name, version).version))
    report = seal.pop("report_path", None)  # stdout carries the seal exactly (SPEC §7)
    if report:
        log.info("comparison report: %s", report)
    emit(seal, json_, _render_seal)


@app.command("promote")
@handle_errors
def promote(
    ref: str = typer.Argument(..., metavar="NAME@VERSION"),
    to: str = typer.Option("production", "--to", help="production or approved."),
    force: bool = typer.Option(False, "--force",
                               help="Promote to production without an approving seal."),
    reason: str | None = typer.Option(None, "--reason", help="Why (required with --force)."),
    json_: bool = JsonOption,
):
    """Move production (or approved) to a version, after its artifact and parity checks.

    Needs an approving seal against the current production, unless --force --reason TEXT
    (production only; the history keeps the reason)."""
    name, version = parse_ref(ref)
    moved = registry().promote(name, version, to=to, force=force, reason=reason, by=who())
    emit(moved, json_, _render_move)


@app.command("rollback")
@handle_errors
def rollback(
    name: str = typer.Argument(..., help="A model name, e.g. cholecystectomy-phase."),
    json_: bool = JsonOption,
):
    """Point production back at the version it held before, after the same artifact checks."""
    emit(registry().rollback(name, by=who()), json_, _render_move)


@app.command("history")
@handle_errors
def history(
    name: str = typer.Argument(..., help="A model name, e.g. cholecystectomy-phase."),
    json_: bool = JsonOption,
):
    """Every pointer move of a model, oldest first."""
    emit(registry().history(name), json_, _render_history)


@app.command("verify")
@handle_errors
def verify(
    name: str = typer.Argument(..., help="A model name, e.g. cholecystectomy-phase."),
    json_: bool = JsonOption,
):
    """Audit a model: every MLflow alias that drifted from surgflow's history, and every
    servable version (production, approved, rollback targets) re-hashed with its ONNX parity
    re-run. Exit 1 on any drift or mismatch."""
    report = registry().audit(name)
    emit(report, json_, _render_audit)
    if not report["ok"]:
        raise typer.Exit(1)


def _v(version: int | None) -> str:
    return "-" if version is None else str(version)


def _render_list(rows: list[dict]) -> None:
    if not rows:
        stdout_console.print("(no registered versions)")
        return
    for name in dict.fromkeys(r["name"] for r in rows):
        table = Table("version", "created", "recipe", "stages", "verdict", "run",
                      title=name, title_justify="left")
        for r in rows:
            if r["name"] == name:
                table.add_row(str(r["version"]), r["created_at"][:19], r["recipe"] or "",
                              ", ".join(r["stages"]), r["verdict"] or "",
                              (r["run_id"] or "")[:12])
        stdout_console.print(table)


def _render_show(d: dict) -> None:
    stdout_console.print(f"[bold]{d['name']}@{d['version']}[/bold]  "
                         f"stages: {', '.join(d['stages']) or '-'}  verdict: {d['verdict'] or '-'}")
    render_auto({k: d[k] for k in ("created_at", "run_id", "recipe", "dataset_versions",
                                   "metrics")})
    stdout_console.print("[bold]artifacts[/bold] (sha256):")
    width = max((len(a["path"]) for a in d["artifacts"]), default=0)
    for a in d["artifacts"]:
        stdout_console.print(f"  {a['path']:<{width}}  {a['sha256']}", soft_wrap=True)
    if d["seal"]:
        _render_seal(d["seal"])
    else:
        stdout_console.print("seal: (none)")


def _render_seal(seal: dict) -> None:
    stdout_console.print(f"seal: [bold]{seal['verdict']}[/bold] {seal['model']} against "
                         f"{seal.get('baseline') or '(no baseline)'} on {seal['field_suite']} "
                         f"at {seal.get('sealed_at')}")
    table = Table("check", "value", "baseline", "threshold", "passed", "reason")
    for c in seal.get("checks", []):
        table.add_row(*[str(c.get(k, "")) if c.get(k) is not None else ""
                        for k in ("name", "value", "baseline", "threshold", "passed", "reason")])
    stdout_console.print(table)


def _render_move(m: dict) -> None:
    same = " (already there)" if m["from"] == m["to"] else ""
    stdout_console.print(f"{m['name']}: {m['stage']} {_v(m['from'])} -> {_v(m['to'])}{same}")


def _render_history(moves: list[dict]) -> None:
    if not moves:
        stdout_console.print("(no pointer moves)")
        return
    table = Table("at (UTC)", "stage", "from", "to", "by", "reason")
    table.columns[0].no_wrap = True
    table.columns[5].ratio = 1
    for m in moves:
        table.add_row(m["at"][:19].replace("T", " "), m["stage"], _v(m["from"]), _v(m["to"]),
                      m["by"], m["reason"])
    stdout_console.print(table)


def _render_audit(r: dict) -> None:
    pointers = ", ".join(f"{s}@{v}" for s, v in r["pointers"].items()) or "(none)"
    stdout_console.print(f"[bold]{r['name']}[/bold]  pointers (surgflow's history): {pointers}")
    for d in r["alias_drift"]:
        stdout_console.print(f"  [red]drift[/red] {d['reason']} (history: {_v(d['history'])})")
    if r["production_unservable"]:
        stdout_console.print(f"  [red]not servable[/red] {r['production_unservable']}")
    for c in r["versions"]:
        mark = "[green]ok[/green]" if c["passed"] else "[red]FAILED[/red]"
        detail = (f"hashes match, parity max |Δ| {c['max_abs_diff']:.2e}" if c["passed"]
                  else c["reason"])
        stdout_console.print(f"  {r['name']}@{c['version']}: {mark} {detail}", soft_wrap=True)
    stdout_console.print("verified" if r["ok"] else "[red]problems found[/red]")
