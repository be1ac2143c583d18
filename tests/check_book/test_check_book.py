"""Self-tests of the browser check (scripts/check_book.py) on tiny fixture sites.

Each kind of broken page must be detected: a JavaScript error, a console error, an image that
does not load, raw `$$` math, MathJax that needs the internet, a TeX error, a broken internal
link; a good page must pass. The search check runs on a small Sphinx site. These tests start
headless Chromium (`make chromium` installs it) and run from `make check-book`, not `make test`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SITES = Path(__file__).resolve().parent / "sites"
MATHJAX = ROOT / "book" / "_static" / "mathjax"


def _load_checker():
    spec = importlib.util.spec_from_file_location("check_book", ROOT / "scripts" / "check_book.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_book"] = module
    spec.loader.exec_module(module)
    return module


check_book = _load_checker()


@pytest.fixture(scope="module", autouse=True)
def _needs_browser():
    try:
        check_book.find_chromium()
        import playwright  # noqa: F401
    except (FileNotFoundError, ImportError) as err:
        pytest.fail(f"the browser self-tests need Chromium and playwright (make chromium): {err}")
    if not (MATHJAX / "tex-chtml.js").is_file():
        pytest.fail(f"no offline MathJax at {MATHJAX} (make mathjax)")


def _site(tmp_path: Path, name: str) -> Path:
    site = tmp_path / name
    shutil.copytree(SITES / name, site)
    (site / "_static").mkdir(exist_ok=True)
    os.symlink(MATHJAX, site / "_static" / "mathjax")
    return site


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """The mixed fixture site checked once by the command line (over http and file://)."""
    tmp = tmp_path_factory.mktemp("mixed")
    site = _site(tmp, "mixed")
    report = tmp / "report.json"
    shots = tmp / "shots"
    code = check_book.main([str(site), "--json", str(report), "--screenshots", str(shots),
                            "--timeout", "30"])
    results = json.loads(report.read_text())["results"]
    by_page = {(r["page"], r["via"]): r for r in results}
    return code, by_page, shots


def _kinds(result) -> set:
    return {kind for kind, _ in result["failures"]}


def _details(result) -> str:
    return "\n".join(f"{kind}: {detail}" for kind, detail in result["failures"])


def test_broken_site_fails_with_exit_code_1(mixed):
    code, _, _ = mixed
    assert code == 1


@pytest.mark.parametrize("via", ["http", "file"])
@pytest.mark.parametrize("page", ["good.html", "other.html", "index.html"])
def test_good_pages_pass(mixed, page, via):
    _, by_page, _ = mixed
    result = by_page[(page, via)]
    assert result["ok"], _details(result)


def test_good_page_is_typeset_and_counted(mixed):
    _, by_page, _ = mixed
    good = by_page[("good.html", "http")]
    assert good["mathjax"] == "done"
    assert good["math"] == [2, 2]  # both .math elements hold MathJax output
    assert good["images"] == [1, 1]
    assert good["links"] == [5, 5]  # 4 <a> (the external and mailto: ones skipped) + rel=next
    index = by_page[("index.html", "http")]
    assert index["math"] == [2, 2]  # the redirect was followed to good.html


@pytest.mark.parametrize("via", ["http", "file"])
@pytest.mark.parametrize(("page", "kind", "needle"), [
    ("js_error.html", "js-error", "undefinedFunctionOfTheFixture"),
    ("console_error.html", "console-error", "FIXTURE-CONSOLE-ERROR"),
    ("broken_image.html", "image", "_images/missing.png"),
    ("raw_math.html", "raw-math", "$$ c^2"),
    ("cdn_mathjax.html", "external-request", "cdn.jsdelivr.net"),
    ("cdn_mathjax.html", "math", "not loaded"),
    ("tex_error.html", "math-error", "superscript"),
])
def test_each_breakage_is_detected(mixed, page, kind, needle, via):
    _, by_page, _ = mixed
    result = by_page[(page, via)]
    assert not result["ok"]
    details = [detail for k, detail in result["failures"] if k == kind]
    assert details, f"{kind} not reported for {page} ({via}):\n{_details(result)}"
    assert any(needle in detail for detail in details), _details(result)


def test_only_the_breakage_is_reported(mixed):
    _, by_page, _ = mixed
    # One problem per page: the checker must not blame the rest of the page.
    assert _kinds(by_page[("js_error.html", "http")]) == {"js-error"}
    assert _kinds(by_page[("console_error.html", "http")]) == {"console-error"}
    assert by_page[("broken_image.html", "http")]["images"] == [1, 2]
    assert _kinds(by_page[("broken_image.html", "http")]) <= {"image", "http-status"}
    raw = by_page[("raw_math.html", "http")]
    assert _kinds(raw) == {"raw-math"} and raw["math"] == [1, 1]


def test_broken_internal_links_are_detected(mixed):
    _, by_page, _ = mixed
    result = by_page[("broken_link.html", "http")]
    links = [detail for kind, detail in result["failures"] if kind == "link"]
    assert any("no_such_page.html" in d and "no such file" in d for d in links), links
    assert any("no id 'no-such-anchor' in other.html" in d for d in links), links
    assert len(links) == 2 and result["links"] == [1, 3]


def test_screenshots_are_saved(mixed):
    _, _, shots = mixed
    for page in ("good", "other", "js_error", "broken_link"):
        png = shots / f"{page}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


def test_good_pages_only_exit_0(tmp_path, capsys):
    site = _site(tmp_path, "mixed")
    code = check_book.main([str(site), "--no-screenshots", "--page", "good.html",
                            "--page", "other.html", "--page", "index.html"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "all 3 pages passed" in out


def test_missing_folder_exit_2(tmp_path, capsys):
    assert check_book.main([str(tmp_path / "nothing-here")]) == 2


def test_list_pages_skips_asset_folders(tmp_path):
    site = _site(tmp_path, "mixed")
    (site / "_static" / "fragment.html").write_text("<p>template fragment</p>")
    (site / "sub").mkdir()
    (site / "sub" / "page.html").write_text("<p>a page</p>")
    pages = check_book.list_pages(site)
    assert "sub/page.html" in pages and "good.html" in pages
    assert not any(page.startswith("_") for page in pages)


SPHINX_CONF = """
extensions = ["sphinx.ext.mathjax"]
html_theme = "alabaster"
html_static_path = ["_static"]
mathjax_path = "mathjax/tex-chtml.js"
project = "fixture"
# Result snippets are fetched page by page, which browsers refuse to file:// pages.
html_show_search_summary = False
"""

SPHINX_INDEX = """
Fixture
=======

The Jacobian :math:`J = \\partial f / \\partial x` of the subnetwork.

.. math:: y = b + W g(V^\\top x)

.. toctree::

   second
"""

SPHINX_SECOND = """
Second page
===========

Nothing to find here but a :ref:`link back <genindex>`.
"""


@pytest.fixture(scope="module")
def sphinx_site(tmp_path_factory):
    src = tmp_path_factory.mktemp("sphinx-src")
    (src / "conf.py").write_text(SPHINX_CONF)
    (src / "index.rst").write_text(SPHINX_INDEX)
    (src / "second.rst").write_text(SPHINX_SECOND)
    (src / "_static").mkdir()
    os.symlink(MATHJAX, src / "_static" / "mathjax")
    out = src / "_build" / "html"
    build = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-q", "-W", str(src),
                            str(out)], capture_output=True, text=True, timeout=300, check=False)
    assert build.returncode == 0, build.stdout + build.stderr
    return out


def test_sphinx_site_passes_and_search_finds_a_word(sphinx_site):
    report = check_book.check_book(sphinx_site, search="Jacobian", timeout_s=30)
    assert report.ok, report.failures
    assert {r.path for r in report.pages} >= {"index.html", "second.html", "search.html",
                                               "genindex.html"}
    assert report.by_path("index.html").math == (2, 2)
    modes = sorted((r.mode, r.path.startswith("search box")) for r in report.search)
    assert modes == [("file", False), ("http", False), ("http", True)]
    assert all(r.links[0] >= 1 for r in report.search)  # results were listed


def test_search_for_an_absent_word_fails(sphinx_site):
    report = check_book.check_book(sphinx_site, search="Xylophonically", file_pass=False,
                                   pages=["index.html"], timeout_s=30)
    failures = [f for f in report.failures if f[2] == "search"]
    assert failures and all("no result for 'Xylophonically'" in f[3] for f in failures), failures
