"""The served OpenAPI document is what the API does: schemathesis (pinned in
scripts/requirements-test.txt) generates requests from the documented parameters of every route
of a live node — valid ones, and invalid ones — and checks that valid requests are accepted
(2xx, or 404 for a site the node does not know), invalid ones rejected with a 4xx, that no request
gets a 5xx, and that every response matches its documented status, content type and schema."""

import re

import hypothesis
import pytest
import schemathesis

from conftest import START

SOURCE = dict(seed=5, hosts=6, rate=50.0, realtime=False, start=START, duration_s=900, anomalies=0, malformed_share=0.01)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from conftest import finished_node

    yield from finished_node(tmp_path_factory, "schema", SOURCE)


@pytest.fixture(scope="module")
def api_schema(served):
    return schemathesis.openapi.from_url(f"http://127.0.0.1:{served.port}/openapi.json")


# /v1/stream (server-sent events) is described the way poem-openapi describes an event stream (an
# array of events), which schemathesis cannot check event by event; test_dashboard.py reads it.
schema = schemathesis.pytest.from_fixture("api_schema").exclude(path="/v1/stream")

RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:?\d{2})$"
)


def epoch_ms(s):
    """RFC 3339 → UTC milliseconds, any year and offset (independent of the server's parser)."""
    y, mo, d, h, mi, sec, frac, off = RFC3339.match(s).groups()
    y, mo, d = int(y), int(mo), int(d)
    # Days from civil (proleptic Gregorian), as in Howard Hinnant's algorithm.
    yy = y - (mo <= 2)
    era = (yy if yy >= 0 else yy - 399) // 400
    yoe = yy - era * 400
    doy = (153 * (mo - 3 if mo > 2 else mo + 9) + 2) // 5 + d - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    offset = 0
    if off not in "Zz":
        hh, mm = int(off[1:3]), int(off[-2:])
        offset = (hh * 3600 + mm * 60) * (1 if off[0] == "+" else -1)
    ms = int((frac or "0")[:3].ljust(3, "0"))
    return (days * 86400 + int(h) * 3600 + int(mi) * 60 + int(sec) - offset) * 1000 + ms


@schema.parametrize()
@hypothesis.settings(max_examples=60, deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
def test_every_route_does_what_its_schema_says(case):
    query = case.query or {}
    times = (query.get("from"), query.get("to"))
    reversed_range = all(isinstance(t, str) and RFC3339.match(t) for t in times) and epoch_ms(times[0]) >= epoch_ms(times[1])
    response = case.call()
    if reversed_range and response.status_code == 400 and "before" in response.json().get("error", ""):
        # The one rule a schema cannot state (documented on `from`): an empty or reversed range
        # is a 400 that says so (test_pipeline.py asserts that it is one).
        return
    case.validate_response(response)
