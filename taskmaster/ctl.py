"""tm-ctl: see and steer a live run from another terminal or host.

It speaks to the master on the master's own socket, as a slave would: signed with the run's
secret (and through Curve when the run uses it). A first "hello" learns the master's epoch and
a one-time word; the request itself carries both, so it is good once, for that master only
(see control.py). No gevent here: a plain socket and one request at a time.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import click

from . import protocol as p
from .config import CONTROL_TIMEOUT_S, DEFAULT_ADDRESS, SECRET_ENV
from .curve import load_curve
from .errors import ConfigError, NoMasterError
from .limits import check_rate
from .messages import MOST_RATE
from .options import GroupedOption, command, execute, setup_logging
from .progress import clock
from .settings import check_address, check_exposure, load_secret, signing_key
from .state import ControlFile
from .transport import ControlLine

COMMANDS = ("status", "pause", "resume", "stop", "rate")


def _option(*decls: str, group: str, **kwargs: Any) -> Any:
    return click.option(*decls, cls=GroupedOption, group=group, show_default=True, **kwargs)


@command("tm-ctl")
@click.argument("action", metavar="COMMAND", type=click.Choice(COMMANDS))
@click.argument("value", required=False)
@_option("--address", group="Connection", default=None, envvar="TASKMASTER_ADDRESS",
         show_envvar=True, help=f"The master's endpoint [default: {DEFAULT_ADDRESS}].")
@_option("--state-file", group="Connection", type=click.Path(dir_okay=False, path_type=Path),
         default=None, help="Find the master running this state file (a tm-run too).")
@_option("--timeout", group="Connection", type=click.FloatRange(min=0.1),
         default=CONTROL_TIMEOUT_S, help="Seconds to wait for the master's answer.")
@_option("--json", "as_json", group="Output", is_flag=True,
         help="status: one JSON object, for scripts.")
@_option("--secret-file", group="Security", type=click.Path(dir_okay=False, path_type=Path),
         default=None, envvar="TASKMASTER_SECRET_FILE", show_envvar=True,
         help=f"File holding the run's shared secret (or set ${SECRET_ENV}).")
@_option("--curve", "curve_dir", group="Security", default=None, envvar="TASKMASTER_CURVE",
         show_envvar=True, type=click.Path(file_okay=False, path_type=Path),
         help="The run's CurveZMQ key directory (see tm-keygen).")
@_option("--insecure", group="Security", is_flag=True,
         help="Allow a non-loopback address without a shared secret.")
def ctl(action: str, value: str | None, address: str | None, state_file: Path | None,
        timeout: float, as_json: bool, secret_file: Path | None, curve_dir: Path | None,
        insecure: bool) -> None:
    """Steer a running run: COMMAND is status, pause, resume, stop, or rate N (jobs per
    second for the whole run; rate off removes the limit)."""
    setup_logging("WARNING")
    rate = _rate(action, value)
    if as_json and action != "status":
        raise click.UsageError("--json is for status")

    def body() -> int:
        found: dict[str, Any] = {}
        if state_file is not None:
            if address is not None:
                raise click.UsageError("--state-file finds the master's address: give one of "
                                       "--address and --state-file")
            found = ControlFile(state_file).read()
        where = found.get("address") or address or DEFAULT_ADDRESS
        check_address(where)
        if found.get("unsigned"):  # tm-run's own socket: a secret in our environment is not its
            secret = None
        elif found.get("secret"):
            secret = found["secret"].encode()
        else:
            secret = load_secret(Path(found["secret_file"]) if found.get("secret_file")
                                 else secret_file)
        check_exposure(where, secret, insecure, "slave")
        keys = curve_dir or (Path(found["curve_dir"]) if found.get("curve_dir") else None)
        answer = _ask(where, signing_key(secret), keys, action, rate, timeout)
        if action == "status" and answer.status is not None:
            click.echo(json.dumps(answer.status) if as_json else _status_text(answer.status))
        else:
            click.echo(answer.line)
        return 0 if answer.ok else 1

    execute("tm-ctl", body)


def _rate(action: str, value: str | None) -> float | None:
    """The rate a ``rate`` command sets (None: off); a usage error for a bad one."""
    if action != "rate":
        if value is not None:
            raise click.UsageError(f"{action} takes no value, got {value!r}")
        return None
    if value is None:
        raise click.UsageError("rate needs a value: jobs per second, or off")
    if value.lower() == "off":
        return None
    try:
        return check_rate(float(value), "rate")
    except (ValueError, ConfigError):
        raise click.UsageError(f"rate must be a positive number of jobs per second (at most "
                               f"{MOST_RATE:g}) or off, got {value!r}") from None


def _ask(address: str, key: bytes | None, curve_dir: Path | None, action: str,
         rate: float | None, timeout_s: float) -> p.Answer:
    """Say hello (to learn the run's epoch), then ask; the master's answer."""
    name = f"ctl:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    curve = load_curve(curve_dir, "slave") if curve_dir is not None else None
    line = ControlLine(address, name.encode(), curve)
    seal = p.Seal(key)
    deadline = time.monotonic() + timeout_s
    try:
        epoch, hello = _request(line, seal, p.Control(name, uuid.uuid4().hex, "hello"), key,
                                deadline, address, curve_dir)
        seal.epoch = epoch
        word = (hello.status or {}).get("challenge")
        _, answer = _request(line, seal, p.Control(
            name, word if isinstance(word, str) else uuid.uuid4().hex, action, rate), key,
            deadline, address, curve_dir)
    finally:
        line.close()
    return answer


def _request(line: ControlLine, seal: p.Seal, request: p.Control, key: bytes | None,
             deadline: float, address: str, curve_dir: Path | None) -> tuple[bytes, p.Answer]:
    line.send(seal(request))
    while (left := deadline - time.monotonic()) > 0:
        frames = line.recv(left)
        if frames is None:
            break
        try:
            envelope = p.decode(frames, key=key, kinds=p.CONTROL_KINDS)
        except p.ProtocolError:
            continue  # not an answer of this master's to us: keep waiting for one
        answer = envelope.message
        if isinstance(answer, p.Answer) and answer.nonce == request.nonce:
            return envelope.epoch, answer
    same = "the same secret" + (" and Curve keys" if curve_dir is not None
                                else " (and --curve, if it uses Curve)")
    raise NoMasterError(f"no answer from a master at {address} within the timeout: is it "
                        f"running there, with {same}? (--timeout waits longer)")


def _status_text(s: dict[str, Any]) -> str:
    """`status` for a person: the run, then one row per slave."""
    def n(key: str) -> str:
        value = s.get(key)
        return f"{value:,}" if isinstance(value, int) else "?"

    def per_s(value: Any) -> str:
        return f"{value:,.0f}/s" if isinstance(value, int | float) else "?"

    kwargs = ", ".join(f"{k}={v!r}" for k, v in (s.get("kwargs") or {}).items())
    state = s.get("state", "?") + (f" by {s['paused_by']}" if s.get("paused_by") else "")
    total = s.get("total")
    eta = s.get("eta_s")
    limit = s.get("rate_limit")
    rows = [
        f"{state}: {s.get('target', '?')}({kwargs})",
        f"  state file   {s.get('state_file', '?')} (failures: {s.get('failures_file', '?')})",
        f"  master       {s.get('address', '?')}, pid {s.get('pid', '?')}, up "
        f"{clock(float(s.get('uptime_s') or 0))}",
        f"  jobs         {n('finished')} finished, {n('failed')} failed"
        + (f" of {total:,}" if isinstance(total, int) else "")
        + f"; {n('retried')} retries, {n('resent')} sent out again",
        f"  rate         {per_s(s.get('rate'))} over the last {s.get('rate_window_s', 10):.0f}s,"
        f" {per_s(s.get('rate_overall'))} overall"
        + (f"; ETA {clock(float(eta))}" if isinstance(eta, int | float) else "")
        + f"; limit {per_s(limit) if limit is not None else 'none'}",
        f"  in hand      {n('buffered')} buffered, {n('leased')} leased; resumes at job "
        f"#{n('resume_seq')}: {s.get('resume_job')}",
    ]
    if s.get("max_failures"):
        rows.append(f"  stops at     --max-failures {s['max_failures']}")
    slaves = s.get("slaves") or []
    rows.append(f"  slaves       {len(slaves)}")
    if slaves:
        rows.append(f"    {'SLAVE':<28} {'CONC':>5} {'DONE':>12} {'HELD':>7} {'RATE':>10} "
                    f"{'HEARD':>7}")
        for row in slaves:
            heard = row.get("last_heard_s")
            rows.append(
                f"    {str(row.get('name', '?'))[:28]:<28} {row.get('concurrency', 0):>5} "
                f"{row.get('done', 0):>12,} {row.get('held', 0):>7,} "
                f"{per_s(row.get('rate')):>10} "
                f"{f'{heard:.1f}s' if isinstance(heard, int | float) else '?':>7}"
                + (" leaving" if row.get("leaving") else ""))
    return "\n".join(rows)
