"""`switchyard replay ...`: replay recorded traffic against another model, from a terminal.

    switchyard replay --since 1h --model A --to-model B --rate 5/s --wait --format table
    switchyard replay show <id> --format csv
    switchyard replay stop <id>
    switchyard replay resume <id> --wait
    switchyard replay list

The command is a client of the gateway's `/v1/replays` API (`--url`, default
`SWITCHYARD_GATEWAY_URL`, else the gateway's own port on this machine,
http://127.0.0.1:<SWITCHYARD_GATEWAY_PORT>, read from the environment or `.env` as the
gateway and `make run` read it; `--api-key`, default `SWITCHYARD_API_KEY`), not a database
tool: a replay selects the caller's own recorded requests (the whole tenant's for an
admin), is sent and billed as that caller, and keeps running in the history service when
the command stops; `--wait` follows it to the end, and an interrupted run is continued
with `resume <id>`. Errors print one line on stderr and
exit with status 1; a gateway that cannot be reached is named by the URL tried and where
that URL came from.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from typing import Annotated, Any, cast
from urllib.parse import quote

import httpx
import typer
from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import SettingsConfigDict

from switchyard.common.http import internal_limits
from switchyard.common.settings import CheckedSettings, SettingsError, http_url
from switchyard.common.text import columns, terminal_safe

replay_app = typer.Typer(
    name="replay",
    help="Replay recorded requests against another model and compare (through the gateway).",
    invoke_without_command=True,
    no_args_is_help=False,
)

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="The gateway's base URL [default: SWITCHYARD_GATEWAY_URL, else "
        "http://127.0.0.1:<SWITCHYARD_GATEWAY_PORT, 8000 unless set>].",
    ),
]
KeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="SWITCHYARD_API_KEY",
        help="API key or access token (chat and history:read scopes).",
        show_envvar=True,
    ),
]
FormatOption = Annotated[str, typer.Option("--format", help="table, csv or json.")]
WaitOption = Annotated[bool, typer.Option("--wait", help="Follow the replay until it completes.")]
COLUMNS = (
    "original_id",
    "original_model",
    "original_status",
    "original_latency_ms",
    "original_input_tokens",
    "original_output_tokens",
    "original_cost_usd",
    "replay_id",
    "replay_model",
    "replay_status",
    "replay_latency_ms",
    "replay_input_tokens",
    "replay_output_tokens",
    "replay_cost_usd",
    "exact_match",
    "similarity",
    "note",
)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {terminal_safe(message)}", err=True)
    return typer.Exit(code=1)


class GatewayAddress(CheckedSettings):
    """Where the gateway is when `--url` is not given, read from the environment or `.env`
    as the gateway reads its own settings: `SWITCHYARD_GATEWAY_URL` (empty: not set), else
    the gateway's port, `SWITCHYARD_GATEWAY_PORT`, on this machine."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    url: str = Field(default="", validation_alias=AliasChoices("SWITCHYARD_GATEWAY_URL"))
    port: int | None = Field(
        default=None, ge=1, le=65535, validation_alias=AliasChoices("SWITCHYARD_GATEWAY_PORT")
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return value if value == "" else str(http_url(value))


# The gateway's port when SWITCHYARD_GATEWAY_PORT is not set (its Settings' default).
DEFAULT_GATEWAY_PORT = 8000


def gateway_url(url: str | None) -> tuple[str, str]:
    """The gateway's base URL and where it came from, as errors tell it (after "that URL
    is"): `url` (`--url`) when given, else `SWITCHYARD_GATEWAY_URL`, else the gateway's
    port on this machine (`SWITCHYARD_GATEWAY_PORT`, 8000 unless set), as `make run`
    serves it.

    Raises:
        typer.Exit: `url` or a setting is not a usable URL or port (one line naming it).
    """
    if url is not None:
        try:
            return str(http_url(url)), "given with --url"
        except ValueError as exc:
            raise _fail(f"--url {url!r}: {exc}") from None
    try:
        address = GatewayAddress()
    except SettingsError as exc:
        raise _fail(str(exc)) from None
    if address.url:
        return address.url, "from SWITCHYARD_GATEWAY_URL"
    if address.port is not None:
        return f"http://127.0.0.1:{address.port}", "built from SWITCHYARD_GATEWAY_PORT"
    return (
        f"http://127.0.0.1:{DEFAULT_GATEWAY_PORT}",
        "the default, as neither SWITCHYARD_GATEWAY_URL nor SWITCHYARD_GATEWAY_PORT is set",
    )


class Client:
    """A blocking client of the gateway's replays API for the CLI, authenticated with an
    API key; `origin` says where `url` came from (see `gateway_url`), for the error when
    the gateway cannot be reached.

    Raises:
        typer.Exit: no API key.
    """

    def __init__(self, url: str, api_key: str | None, origin: str = "given with --url") -> None:
        if not api_key:
            raise _fail("an API key is needed: --api-key or SWITCHYARD_API_KEY")
        self._url = url.rstrip("/")
        self._origin = origin
        self._http = httpx.Client(
            base_url=self._url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=30,
            limits=internal_limits(),
        )

    def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """The JSON body of `method path` (keyword arguments go to httpx).

        Raises:
            typer.Exit: the gateway is unreachable or answered an error (its message printed).
        """
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise _fail(
                f"cannot reach the gateway at {self._url} ({str(exc) or type(exc).__name__}); "
                f"that URL is {self._origin}. Is the gateway running there? Point the command "
                "at it with --url or SWITCHYARD_GATEWAY_URL"
            ) from None
        try:
            data = response.json()
        except ValueError:
            data = {}
        if response.status_code >= 400:
            error = data.get("error") if isinstance(data, dict) else None
            message = error.get("message") if isinstance(error, dict) else response.text[:200]
            raise _fail(f"{message} (HTTP {response.status_code})")
        return cast(dict[str, Any], data)

    def report(self, replay_id: str) -> dict[str, Any]:
        """The whole report, every page of pairs."""
        first = self.call("GET", f"/v1/replays/{quote(replay_id, safe='')}", params={"limit": 1000})
        data = list(first["data"])
        after = first.get("next_after")
        while after is not None:
            page = self.call(
                "GET",
                f"/v1/replays/{quote(replay_id, safe='')}",
                params={"limit": 1000, "after": after},
            )
            data += page["data"]
            after = page.get("next_after")
        first["data"] = data
        return first


def _client(url: str | None, api_key: str | None) -> Client:
    """A client of the gateway `url` (`--url`) names, or the settings do (`gateway_url`)."""
    if not api_key:  # said before a setting's problem: the first thing to give
        raise _fail("an API key is needed: --api-key or SWITCHYARD_API_KEY")
    address, origin = gateway_url(url)
    return Client(address, api_key, origin)


def _check_format(output_format: str) -> None:
    if output_format not in ("table", "csv", "json"):
        raise _fail("--format must be table, csv or json")


@replay_app.callback()
def replay(
    ctx: typer.Context,
    since: Annotated[
        str | None, typer.Option(help="Requests made since: ISO 8601 or relative (1h, 7d).")
    ] = None,
    until: Annotated[str | None, typer.Option(help="...and before this (default: now).")] = None,
    model: Annotated[str | None, typer.Option(help="Only requests to this model.")] = None,
    key: Annotated[str | None, typer.Option("--key", help="Only this API key id's.")] = None,
    user: Annotated[
        str | None, typer.Option("--user", help="Only this user id's (admins).")
    ] = None,
    team: Annotated[str | None, typer.Option("--team", help="Only this team id's.")] = None,
    sample: Annotated[int | None, typer.Option(min=1, help="N requests chosen at random.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="The first N requests.")] = None,
    to_model: Annotated[str | None, typer.Option("--to-model", help="Model to replay on.")] = None,
    rate: Annotated[
        str,
        typer.Option(help="Requests per second, minute or hour, from 1/h to 1000/s: 5/s, 30/m."),
    ] = ("5/s"),
    bill_to: Annotated[
        str, typer.Option(help="caller (default) or original: whose key the replays count on.")
    ] = "caller",
    output_format: FormatOption = "table",
    wait: WaitOption = False,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Replay the requests selected by --since ... on --to-model (see the subcommands to
    show, stop and resume a replay)."""
    if ctx.invoked_subcommand is not None:
        return
    _check_format(output_format)
    if since is None or to_model is None:
        raise _fail("--since and --to-model are required (or use show, stop, resume, list)")
    if sample is not None and limit is not None:
        raise _fail("use either --sample or --limit, not both")
    body = {
        "to_model": to_model,
        "since": since,
        "until": until,
        "model": model,
        "api_key_id": key,
        "user_id": user,
        "team_id": team,
        "sample": sample,
        "limit": limit,
        "rate": rate,
        "bill_to": bill_to,
    }
    client = _client(url, api_key)
    created = client.call("POST", "/v1/replays", json={k: v for k, v in body.items() if v})
    typer.echo(
        terminal_safe(
            f"replay {created['id']}: {created['total']} request(s) to {created['to_model']} "
            f"at {created['rate']}"
        ),
        err=True,
    )
    _finish(client, created["id"], output_format, wait)


@replay_app.command("show")
def show(
    replay_id: str,
    output_format: FormatOption = "table",
    wait: WaitOption = False,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Print a replay's report."""
    _check_format(output_format)
    _finish(_client(url, api_key), replay_id, output_format, wait)


@replay_app.command("stop")
def stop(replay_id: str, url: UrlOption = None, api_key: KeyOption = None) -> None:
    """Stop sending (resume later with `resume`)."""
    replay = _client(url, api_key).call("POST", f"/v1/replays/{quote(replay_id, safe='')}/stop")
    typer.echo(terminal_safe(f"replay {replay['id']} {replay['status']}"))


@replay_app.command("resume")
def resume(
    replay_id: str,
    output_format: FormatOption = "table",
    wait: WaitOption = False,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Go on sending a stopped or interrupted replay; nothing is sent twice."""
    _check_format(output_format)
    client = _client(url, api_key)
    replay = client.call("POST", f"/v1/replays/{quote(replay_id, safe='')}/resume")
    typer.echo(terminal_safe(f"replay {replay['id']} {replay['status']}"), err=True)
    _finish(client, replay_id, output_format, wait)


@replay_app.command("list")
def list_replays(
    url: UrlOption = None,
    api_key: KeyOption = None,
    status: Annotated[
        str | None, typer.Option(help="Only these statuses: running, stopped, completed.")
    ] = None,
) -> None:
    """Your replays, newest first (every page), under a header row."""
    client = _client(url, api_key)
    params: dict[str, str] = {"limit": "100"} | ({"status": status} if status else {})
    rows = []
    while True:
        page = client.call("GET", "/v1/replays", params=params)
        rows += [
            (r["id"], r["status"], r["total"], r["to_model"], r["created_at"]) for r in page["data"]
        ]
        if not page.get("next_cursor"):
            break
        params["cursor"] = page["next_cursor"]
    # The header row even when there is no replay: scripts read it.
    typer.echo(columns(("id", "status", "requests", "to_model", "created_at"), rows))


def _finish(client: Client, replay_id: str, output_format: str, wait: bool) -> None:
    report = client.report(replay_id)
    while wait and report["status"] == "running":
        time.sleep(1.0)
        report = client.report(replay_id)
    if output_format == "json":
        typer.echo(json.dumps(report, indent=2))
    elif output_format == "csv":
        sys.stdout.write(report_csv(report))
    else:
        _print_table(report)


def rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per pair (the columns of the CSV and the table)."""
    flat = []
    for pair in report["data"]:
        # A pair not sent yet (or not replayable) has no replay side.
        original, replay = pair.get("original") or {}, pair.get("replay") or {}
        row = {f"original_{k}": original.get(k) for k in _SIDE}
        row["original_id"] = original.get("request_id")
        row.update({f"replay_{k}": replay.get(k) for k in _SIDE})
        row["replay_id"] = replay.get("request_id")
        row["exact_match"] = pair.get("exact_match")
        row["similarity"] = pair.get("similarity")
        state = pair.get("state")
        row["note"] = pair.get("reason") or ("" if state == "settled" else state)
        flat.append(row)
    return flat


_SIDE = ("model", "status", "latency_ms", "input_tokens", "output_tokens", "cost_usd")


def _cell(value: Any) -> Any:
    # Spreadsheets run cells starting with these as formulas (CSV injection).
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


def report_csv(report: dict[str, Any]) -> str:
    """The replay's compared pairs as CSV, one row per pair under the `COLUMNS` header;
    cells a spreadsheet would run as a formula are prefixed with `'`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows(report):
        writer.writerow([_cell(row[column]) for column in COLUMNS])
    return buffer.getvalue()


def _fmt(value: Any, number: str = ".4f") -> str:
    """A cell or summary value as text: "" for none, yes/no, numbers in `number` format."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float) and number:
        return format(value, number)
    return terminal_safe(str(value))


# The table's columns: (row field, title, number format). Titles are unique, each side's
# named as such, so a reader tells the original's status, latency and cost from the
# replay's; costs keep the summary's six decimals (a few millionths of a dollar are common).
TABLE_COLUMNS = (
    ("original_id", "original", ""),
    ("original_model", "orig model", ""),
    ("original_status", "orig status", ""),
    ("original_latency_ms", "orig ms", ".1f"),
    ("original_cost_usd", "orig cost", ".6f"),
    ("replay_model", "replay model", ""),
    ("replay_status", "replay status", ""),
    ("replay_latency_ms", "replay ms", ".1f"),
    ("replay_cost_usd", "replay cost", ".6f"),
    ("exact_match", "exact", ""),
    ("similarity", "similarity", ".4f"),
    ("note", "note", ""),
)


def report_table(report: dict[str, Any]) -> list[list[str]]:
    """The pairs as table cells: the titles (`TABLE_COLUMNS`), then one row per pair, each
    a list in the titles' order (empty where a side has no value yet)."""
    titles = [title for _, title, _ in TABLE_COLUMNS]
    cells = [
        [_fmt(row[column], number) for column, _, number in TABLE_COLUMNS] for row in rows(report)
    ]
    return [titles, *cells]


def _print_table(report: dict[str, Any]) -> None:
    titles, *cells = report_table(report)
    typer.echo(columns(titles, cells))
    totals = report["totals"]
    original, replay = totals["original"], totals["replay"]
    counts = report["counts"]
    typer.echo("")
    typer.echo(
        terminal_safe(
            f"replay {report['id']} {report['status']}: {report['total']} selected, "
            f"{counts['sent'] + counts['settled']} sent, {totals['not_replayable']} not replayable"
        )
    )
    typer.echo(
        f"cost: {original['cost_usd']:.6f} -> {replay['cost_usd']:.6f} USD "
        f"(delta {totals['cost_delta_usd']:+.6f})"
    )
    if totals["latency_delta_ms"] is not None:
        typer.echo(
            f"latency (mean): {original['latency_ms_mean']:.1f} -> "
            f"{replay['latency_ms_mean']:.1f} ms (delta {totals['latency_delta_ms']:+.1f})"
        )
    typer.echo(
        f"errors: {original['errors']} -> {replay['errors']}; exact matches "
        f"{totals['exact_matches']}/{totals['compared']}; mean similarity "
        f"{_fmt(totals['similarity_mean']) or '-'}"
    )
