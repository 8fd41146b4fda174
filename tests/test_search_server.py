"""The local search page: in headless Chromium a query typed into the box shows the run's clips
ranked as `Searcher.search` ranks them, with their frames and a clean console; the JSON
endpoint answers the same ranking; bad input is a 400 naming the problem; the command line
serves a run and fails in one line without one."""

import json
import pathlib
import queue
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tempret_jax import search, search_server
from trained_run import trained_run

REPO = pathlib.Path(__file__).parent.parent
WAIT_S = 30  # the longest any request or page wait may take


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory)


@pytest.fixture(scope="module")
def searcher(run):
    config, workdir = run
    return search.Searcher.open(workdir, config)


@pytest.fixture
def url(searcher):
    """The page of ``searcher`` served on a free loopback port for one test."""
    server = search_server.serve(searcher, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(WAIT_S)


def _get(address: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(address, timeout=WAIT_S) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_a_query_typed_into_the_page_shows_the_ranked_clips(searcher, url, load_tool):
    browser = load_tool("browser")
    query = str(searcher.index.narrations[1])
    expected = searcher.search(query, search_server.DEFAULT_TOP)
    with browser.Chromium() as chromium:
        page = chromium.open(url + "/")
        assert page.locator("#results").count() == 0  # no query yet: the box only
        page.locator("#q").fill(query)
        page.locator("button[type=submit]").click()
        page.wait_for_selector("#results li.result")
        results = page.locator("#results li.result")
        assert results.count() == len(expected) == min(10, len(searcher.index.clip_rows))
        for k, hit in enumerate(expected):
            text = results.nth(k).inner_text()
            assert f"#{hit.rank}" in text and f"score {hit.score:.4f}" in text
            assert f"{hit.narration_id}: {hit.narration}" in text
        assert page.locator("#results img").count() == len(expected)
        assert browser.broken_images(page) == []
        assert page.locator("#q").input_value() == query  # the box keeps the query
        assert chromium.console_errors == []


def test_the_json_endpoint_ranks_as_the_searcher(searcher, url):
    query = str(searcher.index.narrations[0])
    status, body = _get(f"{url}/api/search?top=2&q={urllib.parse.quote(query)}")
    assert status == 200
    answer = json.loads(body)
    assert answer["query"] == query and answer["top"] == 2
    assert [(h["rank"], h["narration_id"], h["clip_row"]) for h in answer["hits"]] == [
        (h.rank, h.narration_id, h.clip_row) for h in searcher.search(query, 2)]


@pytest.mark.parametrize("path, reason", [
    ("/api/search?q=%20%20", "query (q) is empty"),
    ("/api/search", "query (q) is empty"),
    ("/api/search?q=onion&top=0", "top must be a whole number from 1 to 50, got '0'"),
    ("/api/search?q=onion&top=ten", "got 'ten'"),
])
def test_bad_input_is_a_400_naming_the_problem(url, path, reason):
    status, body = _get(url + path)
    assert status == 400 and reason in json.loads(body)["error"]


def test_the_page_answers_an_empty_query_with_its_reason_and_unknown_paths_with_404(url):
    status, body = _get(url + "/?q=")
    assert status == 400 and "the query (q) is empty" in body and '<form method="get"' in body
    assert _get(url + "/nothing-here")[0] == 404


def _first_line(stream, timeout: float) -> str:
    """The first line of ``stream``, waited for at most ``timeout`` seconds ('' if none)."""
    lines = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        return ""


def test_the_command_line_serves_a_run(run, searcher, tmp_path):
    config, workdir = run  # searched once: the run's config is saved with its index
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "tempret_jax.search_server", "--workdir", str(workdir),
             "--port", "0"], cwd=REPO, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        line = _first_line(process.stdout, 300)
        assert line.startswith(f"serving {config.name} on http://127.0.0.1:"), log.read_text()
        status, body = _get(line.split()[3] + "?q=onion")
        assert status == 200 and 'id="results"' in body
    finally:
        process.terminate()
        try:
            process.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_the_command_line_fails_in_one_line_without_a_run(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tempret_jax.search_server", "--workdir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert str(tmp_path) in result.stderr
