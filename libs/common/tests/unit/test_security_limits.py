"""The shared limits: the JSON nesting bound against what the serialisers downstream
accept, the body size limit, and the webhook target policy with its guarded transport."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import orjson
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from switchyard.common.egress import (
    GuardedTransport,
    InvalidTargetURL,
    RefusedDestination,
    TargetPolicy,
    UnresolvableDestination,
    check_target_url,
    parse_networks,
)
from switchyard.common.errors import install_error_handlers
from switchyard.common.events import (
    ChatRequestData,
    ChatRequested,
    ClientAPI,
    decode_event,
    encode_event,
)
from switchyard.common.jsonbody import (
    MAX_JSON_DEPTH,
    MAX_JSON_VALUES,
    BoundedJsonRoute,
    JsonTooDeep,
    JsonTooManyValues,
    check_value_count,
    json_depth_exceeds,
    loads,
    loads_off_loop,
    scan_json,
)
from switchyard.common.limits import BodySizeLimit
from switchyard.common.offloop import OFF_LOOP_BYTES


def nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


def test_the_depth_bound_counts_levels_of_the_whole_document():
    assert not json_depth_exceeds({"a": nested(MAX_JSON_DEPTH - 1)})
    assert json_depth_exceeds({"a": nested(MAX_JSON_DEPTH)})
    assert not json_depth_exceeds("scalar") and not json_depth_exceeds({})
    with pytest.raises(JsonTooDeep):
        loads(b"[" * 100_000 + b"]" * 100_000)  # iterative: no RecursionError either


def array_of(count: int, item: bytes) -> bytes:
    """A JSON object holding an array of `count` copies of `item`."""
    return b'{"x": [' + b",".join([item] * count) + b"]}"


@pytest.mark.parametrize(
    ("item", "values"),
    [(b"{}", 1), (b"[ ]", 1), (b"1", 1), (b'""', 1), (b"1.5", 1), (b'{"a": 1}', 2)],
)
def test_a_body_of_more_values_than_the_bound_is_refused_before_it_is_parsed(
    item, values, monkeypatch
):
    """A 50 MiB body of `{},{},...` was 16 million dicts once parsed (gigabytes, and a
    minute of walking them on the event loop). Refused on its bytes, never parsed."""
    count = (MAX_JSON_VALUES - 2) // values
    at_bound = array_of(count, item)
    over = array_of(count + 1, item)
    assert len(loads(at_bound)["x"]) == count
    import switchyard.common.jsonbody as jsonbody

    def never(_: bytes) -> None:
        raise AssertionError("parsed")

    monkeypatch.setattr(jsonbody.orjson, "loads", never)
    with pytest.raises(JsonTooManyValues, match="1,000,000 JSON values"):
        loads(over)


def test_separators_inside_strings_do_not_count_as_values():
    """A prompt may hold a CSV or JSON file: its commas and brackets are text."""
    csv = "a,b,[c],{d}\n" * (MAX_JSON_VALUES // 2)
    body = orjson.dumps({"messages": [{"role": "user", "content": csv}]})
    check_value_count(body)
    assert loads(body)["messages"][0]["content"] == csv
    # Escaped quotes inside strings end nothing.
    quoted = orjson.dumps({"content": '"a", "b", ' * MAX_JSON_VALUES})
    check_value_count(quoted)
    # Strings are values too: more strings than the bound is refused.
    with pytest.raises(JsonTooManyValues):
        check_value_count(array_of(MAX_JSON_VALUES, b'"a,b"'))
    # Keys are not: an object of 600,000 string pairs holds 600,001 values.
    pairs = {f"k{i}": "v" for i in range(600_000)}
    check_value_count(orjson.dumps(pairs))


def test_a_text_body_is_counted_whatever_characters_it_holds():
    """A `str` body is counted as its UTF-8 bytes, a lone surrogate (which JSON's `\\ud800`
    escape stands for, and Python's `json` makes) included: never a UnicodeEncodeError."""
    check_value_count('{"content": "lone \ud800 and \U0001f680"}')
    with pytest.raises(JsonTooManyValues):
        check_value_count("[" + "\ud800," * 5 + "1]", max_values=3)


def test_the_string_scan_is_linear_on_invalid_json():
    """Many escaped quotes in an unterminated string made every failed match from a quote
    scan to the end: 3,000 of them took 6 s in a 1 MB body. Counted here, not timed:
    the scan matches each string once."""
    import switchyard.common.jsonbody as jsonbody

    body = b'{"model":"m","messages":[{"role":"user","content":"' + b'\\"' * 3000
    body += b"," * MAX_JSON_VALUES
    matches = list(jsonbody._JSON_STRING.finditer(body))
    assert len(matches) <= 10  # the keys, then one match to the end
    assert matches[-1].end() == len(body)
    check_value_count(body)  # commas inside the string: invalid JSON, left to the parser
    with pytest.raises(orjson.JSONDecodeError):
        loads(body)


def test_the_walk_counts_values_and_stops_at_the_bound():
    value = {"x": [{"a": [1, 2]}] * 10}
    # The root, "x", 10 objects, their 10 lists, 20 numbers.
    assert scan_json(value, max_values=42) == (False, False, False)
    assert scan_json(value, max_values=41) == (False, False, True)
    assert scan_json(value) == (False, False, False)  # no bound unless given


async def test_a_large_body_is_parsed_off_the_event_loop(monkeypatch):
    """Parsing and checking a large body shares the interpreter with the event loop
    instead of holding it; a small one is parsed at once."""
    import switchyard.common.jsonbody as jsonbody

    threads: list[str] = []
    real = jsonbody.loads

    def recorded(raw: bytes) -> object:
        threads.append(threading.current_thread().name)
        return real(raw)

    monkeypatch.setattr(jsonbody, "loads", recorded)
    large = orjson.dumps({"content": "x" * OFF_LOOP_BYTES})
    assert (await loads_off_loop(large))["content"] == "x" * OFF_LOOP_BYTES
    assert (await loads_off_loop(b'{"a": 1}')) == {"a": 1}
    main = threading.main_thread().name
    assert threads[0] != main and threads[1] == main


def test_a_body_at_the_bound_survives_every_serialiser_downstream():
    # The deepest body the gateway accepts travels inside an event: Kafka (pydantic's JSON
    # parser), history (orjson), PostgreSQL via psycopg (json) must all take it.
    body = {"model": "m", "messages": [], "metadata": {"k": nested(MAX_JSON_DEPTH - 2)}}
    assert not json_depth_exceeds(body) and json_depth_exceeds(body, MAX_JSON_DEPTH - 1)
    event = ChatRequested(
        source="test",
        tenant="t",
        request_id="r",
        data=ChatRequestData(
            api=ClientAPI.OPENAI_CHAT_COMPLETIONS,
            model="m",
            body=body,
            user_id="u",
            deadline=datetime.now(UTC) + timedelta(seconds=5),
        ),
    )
    decoded = decode_event(encode_event(event))
    assert decoded.data.body == body
    assert orjson.loads(orjson.dumps(event.model_dump(mode="json")))["data"]["body"] == body
    import json

    assert json.loads(json.dumps(body)) == body
    # ...with room to spare: four times the bound still fits the tightest of them.
    deeper = {"body": nested(MAX_JSON_DEPTH * 3)}
    orjson.dumps(deeper)
    ChatRequestData.model_validate_json(
        orjson.dumps(
            {
                "api": "openai.chat_completions",
                "model": "m",
                "body": deeper,
                "user_id": "u",
                "deadline": "2030-01-01T00:00:00Z",
            }
        )
    )


class Item(BaseModel):
    name: str


def small_app(limit: int) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    from fastapi import APIRouter

    router = APIRouter(route_class=BoundedJsonRoute)

    @router.post("/items")
    async def create(item: Item) -> dict:
        return {"name": item.name}

    app.include_router(router)
    app.add_middleware(BodySizeLimit, max_bytes=limit)
    return app


async def test_bodies_over_the_limit_are_413_even_when_streamed_into_a_model_route():
    app = small_app(1000)

    async def chunks():
        for _ in range(10):
            yield b"x" * 500

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        declared = await c.post("/items", content=b"x" * 1001)
        streamed = await c.post("/items", content=chunks())
        deep = await c.post(
            "/items",
            content=b'{"name": ' + b"[" * 100 + b"]" * 100 + b"}",
            headers={"content-type": "application/json"},
        )
        fine = await c.post("/items", json={"name": "ok"})

    assert declared.status_code == streamed.status_code == 413
    assert streamed.json()["error"]["code"] == "request_too_large"
    assert deep.status_code == 400 and deep.json()["error"]["code"] == "json_too_deep"
    assert fine.json() == {"name": "ok"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b'{"name": "\\ud800"}',
            "The request body is not valid JSON: no low surrogate in string at character 10.",
        ),
        (
            b'{"name": "x",}',
            "The request body is not valid JSON: trailing comma is not allowed at character 12.",
        ),
        (
            '{"name": "café"}'.encode("latin-1"),
            "The request body is not valid JSON: it is not UTF-8 text, as JSON must be.",
        ),
    ],
)
async def test_a_body_that_is_not_json_is_told_what_the_parser_refused_and_where(body, message):
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(small_app(1000)), base_url="http://t"
    ) as c:
        refused = await c.post("/items", content=body, headers={"content-type": "application/json"})

    assert refused.status_code == 400
    assert refused.json()["error"] == {
        "message": message,
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_json",
    }


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd", "deflate", "GZIP, identity"])
async def test_compressed_bodies_are_415_never_read_as_they_are(encoding):
    import gzip

    app = small_app(1000)
    body = b'{"name": "ok"}'
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        compressed = await c.post(
            "/items",
            content=gzip.compress(body),
            headers={"content-type": "application/json", "content-encoding": encoding},
        )
        identity = await c.post(
            "/items",
            content=body,
            headers={"content-type": "application/json", "content-encoding": "identity"},
        )
    assert compressed.status_code == 415
    assert compressed.headers["accept-encoding"] == "identity"
    error = compressed.json()["error"]
    assert (error["type"], error["code"]) == (
        "invalid_request_error",
        "unsupported_content_encoding",
    )
    assert encoding in error["message"]
    assert identity.json() == {"name": "ok"}


@pytest.mark.parametrize("url", ["/items/%00", "/items?user_id=%00", "/items?x=a%00b", "/it%00ems"])
async def test_a_nul_in_the_url_is_a_400_before_any_route_sees_it(url):
    app = small_app(1000)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        refused = await c.post(url, json={"name": "ok"})
        fine = await c.post("/items?x=%2500", json={"name": "ok"})  # a literal "%00"... encoded

    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "invalid_request"
    assert "NUL" in refused.json()["error"]["message"]
    assert fine.status_code == 200


@pytest.mark.parametrize(
    "url",
    [
        "http://host:1:2/",
        "http://[x/",
        "http://a.example/\r\n",
        "http://a.example/\x1b",
        "http://a b.example/",
        "ftp://a.example/",
        "//a.example/",
        "http://u:p@a.example/",
        "http://a.example:0/",
        "http://a.example:65536/",
        "http://" + "a" * 3000 + ".example/",
        42,
    ],
)
def test_malformed_target_urls_are_refused(url):
    with pytest.raises(InvalidTargetURL):
        check_target_url(url)


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1", "127.1", "2130706433", "0x7f000001", "[::1]", "[::ffff:127.0.0.1]",
        "10.0.0.1", "172.16.0.1", "192.168.0.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
        "224.0.0.1", "255.255.255.255", "[fe80::1]", "[fc00::1]", "240.0.0.1",
        # IPv6 carrying a private IPv4 address (6to4, NAT64, Teredo), and site-local.
        "[2002:7f00:1::]", "[2002:a9fe:a9fe::]", "[2002:0a00:0001::1]", "[64:ff9b::7f00:1]",
        "[64:ff9b::a9fe:a9fe]", "[2001:0:4136:e378:8000:63bf:80ff:fffe]", "[fec0::1]",
        "[::ffff:a9fe:a9fe]", "[::127.0.0.1]",
    ],
)  # fmt: skip
async def test_non_public_addresses_are_refused(host):
    with pytest.raises(RefusedDestination):
        await TargetPolicy().check_url(f"http://{host}/hook")


@pytest.mark.parametrize("host", ["8.8.8.8", "[2606:4700::1111]", "[2002:0808:0808::1]"])
async def test_public_addresses_pass(host):
    """6to4 carrying a public IPv4 address is as public as that address."""
    await TargetPolicy().check_url(f"http://{host}/hook")


@pytest.mark.parametrize("host", ["localhost", "localhost.", "LOCALHOST.", "hooks.localhost."])
async def test_localhost_names_are_loopback_whatever_the_resolver_says(host):
    """RFC 6761: a resolver that does not know `localhost.` (or one under it) must not make
    it pass as a name to try later; where loopback is allowed, it is dialled there."""

    async def unknown(host: str, port: int) -> list[str]:
        raise OSError("no such host")

    with pytest.raises(RefusedDestination):
        await TargetPolicy(resolver=unknown).check_url(f"http://{host}:8080/hook")
    allowed = TargetPolicy(parse_networks("127.0.0.0/8"), resolver=unknown)
    assert await allowed.resolve(host, 8080) == [ipaddress.IPv4Address("127.0.0.1")]


async def test_names_are_judged_by_every_address_they_resolve_to():
    answers = {"ok.example": ["93.184.216.34"], "mixed.example": ["93.184.216.34", "10.0.0.1"]}

    async def resolver(host: str, port: int) -> list[str]:
        if host not in answers:
            raise OSError("no such host")
        return answers[host]

    policy = TargetPolicy(resolver=resolver)
    await policy.check_url("https://ok.example/x")
    with pytest.raises(RefusedDestination):
        await policy.check_url("https://mixed.example/x")
    with pytest.raises(UnresolvableDestination):
        await policy.check_url("https://gone.example/x")
    allowed = TargetPolicy(parse_networks("10.0.0.0/8"), resolver=resolver)
    await allowed.check_url("https://mixed.example/x")


class Server:
    def __init__(self) -> None:
        self.hits = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                server.hits += 1
                self.send_response(302)
                self.send_header("Location", "http://127.0.0.1:1/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.http.server_address[1]
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


async def test_the_transport_dials_the_address_it_checked_not_a_second_lookup():
    server = Server()
    lookups: list[str] = []

    async def rebinding(host: str, port: int) -> list[str]:
        # First answer allowed; any later lookup would point elsewhere (DNS rebinding).
        lookups.append(host)
        return ["127.0.0.1"] if len(lookups) == 1 else ["10.9.9.9"]

    allowed = TargetPolicy(parse_networks("127.0.0.0/8"), resolver=rebinding)
    try:
        async with httpx.AsyncClient(transport=GuardedTransport(allowed)) as client:
            response = await client.post(f"http://hooks.test:{server.port}/x", content=b"{}")
        refused = TargetPolicy(resolver=rebinding)
        async with httpx.AsyncClient(transport=GuardedTransport(refused)) as client:
            with pytest.raises(RefusedDestination):
                await client.post(f"http://hooks.test:{server.port}/x", content=b"{}")
    finally:
        server.close()

    assert response.status_code == 302  # the redirect is not followed
    assert server.hits == 1  # the refused client never connected
    assert lookups == ["hooks.test", "hooks.test"]


async def test_resolution_is_bounded_in_time():
    async def hanging(host: str, port: int) -> list[str]:
        await asyncio.sleep(10)
        return []

    with pytest.raises(UnresolvableDestination):
        await TargetPolicy(resolver=hanging, resolve_timeout_s=0.05).check_url("http://x.example")


async def test_metrics_can_be_put_behind_a_token():
    from switchyard.common.metrics import metrics_router

    app = FastAPI()
    install_error_handlers(app)
    app.include_router(metrics_router(token="scrape-secret"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        anonymous = await c.get("/metrics")
        wrong = await c.get("/metrics", headers={"Authorization": "Bearer nope"})
        scraper = await c.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
    assert anonymous.status_code == wrong.status_code == 401
    assert scraper.status_code == 200 and "python_info" in scraper.text
