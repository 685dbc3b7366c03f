"""GET /api/v1/lanes/{lane}/objects/table: the Object Features table of one time step, as the export writes it."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli
from tests.integration.webserver import ServeProcess, http_get

pytestmark = pytest.mark.timeout(600)

TIMESERIES = "/work/shared/data/ilastik-timeseries/mitocheckPixelClassification.ilp"
THRESHOLD = "channel=1,min_size=5"


@pytest.fixture(scope="module")
def server():
    with ServeProcess(TIMESERIES, "--workers", "1", "--threshold", THRESHOLD, "--token", "sesame-1234") as served:
        yield served


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("web-table")
    result = run_cli("--headless", "--no-progress", "--project", TIMESERIES, "--workers", "1", "--threshold",
                     THRESHOLD, "--export_source", "Object Features", "--output_format", "csv",
                     "--output_filename_format", str(folder / "table"))
    assert result.returncode == 0, result.stderr
    return (folder / "table.csv").read_text().splitlines()


def test_csv_of_each_time_step_is_the_exports_rows_of_that_step(server, exported):
    header, rows = exported[0], [line.split(",") for line in exported[1:]]
    for t in (0, 4, 8):
        status, body, headers = server.get(f"/api/v1/lanes/0/objects/table?t={t}")
        assert status == 200 and headers["Content-Type"].startswith("text/csv")
        lines = body.decode().splitlines()
        assert lines[0] == header
        ours = [line.split(",") for line in lines[1:]]
        theirs = [row for row in rows if row[1] == str(t)]
        assert len(ours) == len(theirs) > 0
        assert [row[1:] for row in ours] == [row[1:] for row in theirs]  # object_id counts within the answer
        assert [row[0] for row in ours] == [str(i) for i in range(len(ours))]


def test_json_has_the_columns_and_numbers(server, exported):
    status, body, headers = server.get("/api/v1/lanes/0/objects/table?t=2&format=json")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    answer = json.loads(body)
    assert answer["columns"] == exported[0].split(",")
    csv_rows = [line.split(",") for line in exported[1:] if line.split(",")[1] == "2"]
    assert [[float(v) for v in row[1:]] for row in answer["rows"]] == [[float(v) for v in row[1:]]
                                                                         for row in csv_rows]


@pytest.mark.parametrize("query, status, words", [
    ("?t=9", 400, "t '9' is not a time step of the lane (0 to 8)"),
    ("?t=-1", 400, "is not a time step"),
    ("?t=%C2%B2", 400, "is not a time step"),
    ("?format=xml", 400, "unknown format 'xml' (choose one of csv, json)"),
])
def test_bad_parameters_are_400_with_a_message(server, query, status, words):
    got, body, headers = server.get("/api/v1/lanes/0/objects/table" + query)
    assert got == status and words in json.loads(body)["error"], (got, body)
    assert server.get("/api/v1/lanes/7/objects/table")[0] == 404


def test_the_table_needs_the_token(server):
    path = "/api/v1/lanes/0/objects/table"
    assert http_get(server.base + path)[0] == 401
    assert http_get(server.base + path, {"Authorization": "Bearer wrong"})[0] == 401
    assert http_get(server.base + path, {"Authorization": "Bearer sesame-1234"})[0] == 200
    assert http_get(server.base + "/t/sesame-1234" + path + "?format=json")[0] == 200
