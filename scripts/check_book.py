#!/usr/bin/env python3
"""Check a built HTML book in headless Chromium: every page must work offline.

Usage::

    python scripts/check_book.py _build/html --search Jacobian

The HTML folder is served on a localhost port by a ``http.server`` thread and every page is
opened in headless Chromium (the system's ``/usr/bin/chromium``, driven by Playwright). A page
passes when

* it raises no JavaScript error and logs no console error;
* every request it makes succeeds, and none goes to a host other than localhost (such requests
  are blocked and counted as failures: the book must work without internet access);
* every ``<img>`` has loaded (``naturalWidth > 0``);
* MathJax has finished (``MathJax.startup.promise``), every ``.math`` element holds an
  ``mjx-container``, no ``mjx-merror`` (a TeX error) is shown, and no visible text still holds
  raw ``$$``, ``\\(`` or ``\\[``;
* every internal ``<a href>`` (and ``<link rel=next|prev|index|search>``) points to a file of
  the build, and its ``#anchor``, if any, is an ``id`` (or ``name``) in the target page.

A full-page screenshot of each page is saved as ``<screenshots>/<page path>.png``. With
``--search WORD`` the search page must list at least one result for WORD, both over
http and when opened from disk (``file://``), and so must the search box of the page a reader
lands on (where ``index.html`` leads).
A second pass opens every page from disk (``file://``, as the README tells readers to do) and
repeats the error, image and math checks there.

Not checked as pages: files under folders starting with ``_`` (``_static``, ``_sources``,
``_images``, ...), which hold assets and template fragments rather than pages. ``genindex.html``
and ``search.html`` are ordinary pages and are checked like the others.

Prints one line per page and exits with 1 listing every failure, 0 when all pages pass, and 2
when the check cannot run (no HTML folder, no Chromium, no Playwright).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import html.parser
import http.server
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

try:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright
except ImportError:  # reported by BookChecker.browser(), with what to install
    PlaywrightError = RuntimeError
    sync_playwright = None

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
NETWORK_SCHEMES = {"http", "https", "ws", "wss", "ftp"}
LINK_RELS = {"next", "prev", "index", "search"}
VIEWPORT = {"width": 1280, "height": 900}

# Runs in the page once it has loaded: waits for MathJax and the images, then reports what
# the Python side checks. `timeoutMs` bounds every wait.
PAGE_PROBE_JS = r"""
async (timeoutMs) => {
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const withTimeout = (promise, ms) => Promise.race([
    promise.then(() => "done", (err) => "error: " + err),
    sleep(ms).then(() => "timeout"),
  ]);
  const out = {};
  const mathjaxScript = Array.from(document.scripts).some(
    (s) => /mathjax|tex-(chtml|svg|mml)/i.test(s.src || ""));
  // Deferred and async scripts have run by the load event, so a MathJax that loaded has
  // defined MathJax.startup by now; a short grace covers slow script evaluation.
  const t0 = Date.now();
  while (mathjaxScript && !(window.MathJax && window.MathJax.startup
                            && window.MathJax.startup.promise) && Date.now() - t0 < 2000) {
    await sleep(50);
  }
  if (!mathjaxScript) out.mathjax = "absent";
  else if (!(window.MathJax && window.MathJax.startup && window.MathJax.startup.promise)) {
    out.mathjax = "not loaded";
  } else {
    out.mathjax = await withTimeout(window.MathJax.startup.promise, timeoutMs);
  }
  // Images: lazy ones are forced to load so that every image is checked.
  const images = Array.from(document.images);
  images.forEach((img) => { if (img.loading === "lazy") img.loading = "eager"; });
  await withTimeout(Promise.all(images.map((img) => img.complete ? null : new Promise(
    (resolve) => { img.addEventListener("load", resolve); img.addEventListener("error", resolve); }
  ))), timeoutMs);
  if (document.fonts) await withTimeout(document.fonts.ready, timeoutMs);
  out.images = images.map((img) => ({
    src: img.currentSrc || img.src || img.getAttribute("src") || "",
    ok: img.complete && img.naturalWidth > 0,
  }));
  // Math: every .math element must hold typeset output.
  const mathEls = Array.from(document.querySelectorAll(".math"));
  out.math_total = mathEls.length;
  out.math_untypeset = mathEls.filter((el) => !el.querySelector("mjx-container"))
    .map((el) => el.textContent.trim().slice(0, 80));
  out.mjx_total = document.querySelectorAll("mjx-container").length;
  out.math_errors = Array.from(document.querySelectorAll("mjx-merror")).map(
    (el) => (el.getAttribute("data-mjx-error") || el.textContent || "").slice(0, 120));
  // Raw TeX left in visible text (code blocks and MathJax's own output excluded).
  const skip = "script, style, pre, code, textarea, noscript, template, mjx-container, "
    + ".highlight, .MathJax_Preview";
  const raw = [];
  const walker = document.createTreeWalker(document.body || document.documentElement,
                                           NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const text = node.nodeValue;
    if (!/\$\$|\\\(|\\\[/.test(text)) continue;
    if (node.parentElement && node.parentElement.closest(skip)) continue;
    const at = text.search(/\$\$|\\\(|\\\[/);
    raw.push(text.slice(Math.max(0, at - 20), at + 60).replace(/\s+/g, " ").trim());
  }
  out.raw_math = raw;
  // Links: resolved by the browser; the Python side checks files and anchors.
  out.links = Array.from(document.querySelectorAll("a[href]")).map((a) => a.href);
  Array.from(document.querySelectorAll("link[href]")).forEach((l) => {
    const rel = (l.getAttribute("rel") || "").toLowerCase().split(/\s+/);
    if (rel.some((r) => ["next", "prev", "index", "search"].includes(r))) out.links.push(l.href);
  });
  out.ids = Array.from(document.querySelectorAll("[id]")).map((el) => el.id)
    .concat(Array.from(document.querySelectorAll("a[name]")).map((el) => el.getAttribute("name")));
  out.title = document.title;
  return out;
}
"""

SETTLE_JS = r"""
async (timeoutMs) => {
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const settled = [document.fonts ? document.fonts.ready : null];
  if (window.MathJax && window.MathJax.startup && window.MathJax.startup.promise) {
    settled.push(window.MathJax.startup.promise);
  }
  await Promise.race([Promise.allSettled(settled), sleep(timeoutMs)]);
}
"""

SEARCH_DONE_JS = r"""
() => {
  const summary = document.querySelector("#search-results .search-summary");
  return !!(summary && summary.textContent.trim());
}
"""

SEARCH_RESULTS_JS = r"""
() => ({
  summary: (document.querySelector("#search-results .search-summary") || {}).textContent || "",
  hrefs: Array.from(document.querySelectorAll("#search-results ul.search li a"))
    .map((a) => a.href),
})
"""


@dataclass
class PageResult:
    """What the browser found on one page (one pass: ``http`` or ``file``)."""

    path: str
    mode: str = "http"
    failures: list = field(default_factory=list)
    images: tuple = (0, 0)  # (loaded, total)
    math: tuple = (0, 0)  # (typeset .math elements, all .math elements)
    links: tuple = (0, 0)  # (resolved internal links, all internal links)
    mathjax: str = ""
    seconds: float = 0.0
    screenshot: str = ""

    @property
    def ok(self) -> bool:
        return not self.failures

    def fail(self, kind: str, detail: str) -> None:
        self.failures.append((kind, detail))


@dataclass
class Report:
    """All page results of one run, plus the search checks."""

    html_dir: Path
    pages: list = field(default_factory=list)
    search: list = field(default_factory=list)  # PageResults of the search checks
    seconds: float = 0.0

    @property
    def failures(self) -> list:
        return [(r.mode, r.path, kind, detail)
                for r in self.pages + self.search for kind, detail in r.failures]

    @property
    def ok(self) -> bool:
        return not self.failures

    def by_path(self, path: str, mode: str = "http") -> PageResult:
        for result in self.pages:
            if result.path == path and result.mode == mode:
                return result
        raise KeyError(f"no result for page {path!r} ({mode})")


class _IdCollector(html.parser.HTMLParser):
    """Collects ``id`` and ``<a name>`` values and a ``<meta http-equiv=refresh>`` target."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.refresh: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("name"):
            self.ids.add(attrs["name"])
        if tag == "meta" and (attrs.get("http-equiv") or "").lower() == "refresh":
            match = re.search(r"url\s*=\s*['\"]?([^'\";]+)", attrs.get("content") or "",
                              re.IGNORECASE)
            if match:
                self.refresh = match.group(1).strip()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # the server thread must not print every request
        pass


@contextlib.contextmanager
def serve(directory: Path):
    """Serve ``directory`` on a free localhost port; yields the base URL (ending in ``/``)."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def find_chromium(explicit: str | None = None) -> str:
    """Path of the system Chromium: ``explicit``, ``$CHROMIUM``, or the usual names."""
    candidates = [explicit] if explicit else [os.environ.get("CHROMIUM"), *CHROMIUM_CANDIDATES]
    for candidate in filter(None, candidates):
        path = shutil.which(candidate) or (candidate if os.access(candidate, os.X_OK) else None)
        if path:
            return path
    raise FileNotFoundError(
        f"Chromium not found (looked for {', '.join(filter(None, candidates))}); "
        "install it with `make chromium` (Debian packages chromium and chromium-driver)")


def list_pages(html_dir: Path) -> list[str]:
    """Every ``.html`` page of the build, as POSIX paths relative to ``html_dir``.

    Folders starting with ``_`` or ``.`` hold assets (``_static``, ``_sources``, ``_images``)
    and template fragments (``_static/webpack-macros.html``), not pages.
    """
    pages = []
    for path in sorted(html_dir.rglob("*.html")):
        rel = path.relative_to(html_dir)
        if any(part.startswith(("_", ".")) for part in rel.parts[:-1]):
            continue
        pages.append(rel.as_posix())
    return pages


class _Targets:
    """Resolves internal link targets to files of the build and caches their anchors."""

    def __init__(self, html_dir: Path) -> None:
        self.html_dir = html_dir.resolve()
        self._cache: dict[Path, _IdCollector] = {}

    def parse(self, path: Path) -> _IdCollector:
        if path not in self._cache:
            collector = _IdCollector()
            collector.feed(path.read_text(encoding="utf-8", errors="replace"))
            self._cache[path] = collector
        return self._cache[path]

    def file_for(self, url_path: str) -> Path | None:
        rel = urllib.parse.unquote(url_path).lstrip("/")
        path = (self.html_dir / rel).resolve()
        if path != self.html_dir and self.html_dir not in path.parents:
            return None  # outside the build
        if path.is_dir():
            path = path / "index.html"
        return path if path.is_file() else None

    def check(self, url: str, base: str, current: str, current_ids: set) -> str | None:
        """Why the internal link ``url`` is broken, or None when it resolves."""
        parts = urllib.parse.urlsplit(url)
        path = self.file_for(parts.path[len(urllib.parse.urlsplit(base).path) - 1:])
        if path is None:
            return f"{url}: no such file in the build"
        anchor = urllib.parse.unquote(parts.fragment)
        if not anchor:
            return None
        if path.relative_to(self.html_dir).as_posix() == current:
            ids = current_ids  # the live page: ids made by scripts count too
        elif path.suffix == ".html":
            ids = self.parse(path).ids
        else:
            return None
        if anchor not in ids:
            return f"{url}: no id {anchor!r} in {path.relative_to(self.html_dir).as_posix()}"
        return None


class BookChecker:
    """Drives one headless Chromium over the pages of ``html_dir``."""

    def __init__(self, html_dir: Path, *, chromium: str | None = None, timeout_s: float = 60.0,
                 allow: list[str] | None = None) -> None:
        self.html_dir = Path(html_dir).resolve()
        self.chromium = find_chromium(chromium)
        self.timeout_ms = int(timeout_s * 1000)
        self.allow = [re.compile(pattern) for pattern in (allow or [])]
        self.targets = _Targets(self.html_dir)

    def _allowed(self, text: str) -> bool:
        return any(pattern.search(text) for pattern in self.allow)

    @contextlib.contextmanager
    def browser(self):
        if sync_playwright is None:
            raise ImportError("the browser check needs the Python package playwright "
                              "(`make chromium` installs it into .venv)")
        with sync_playwright() as pw, tempfile.TemporaryDirectory(prefix="check-book-") as profile:
            context = pw.chromium.launch_persistent_context(
                profile, executable_path=self.chromium, headless=True, args=CHROMIUM_ARGS,
                viewport=VIEWPORT, service_workers="block")
            try:
                yield context
            finally:
                context.close()

    def _watch(self, page, result: PageResult) -> dict:
        """Record JS errors, console errors and failed or external requests of ``page``.

        Returns a switch: set ``["on"] = False`` before leaving the page, so that requests that
        closing or navigating cancels (``net::ERR_ABORTED``) are not blamed on it.
        """
        switch = {"on": True}

        def on_console(msg):
            if not switch["on"]:
                return
            # "Failed to load resource" repeats a request failure that is recorded below.
            if (msg.type == "error" and not msg.text.startswith("Failed to load resource")
                    and not self._allowed(msg.text)):
                result.fail("console-error", msg.text)

        def on_pageerror(err):
            if not switch["on"]:
                return
            text = str(err).splitlines()[0] if str(err) else repr(err)
            if not self._allowed(text):
                result.fail("js-error", text)

        def on_requestfailed(request):
            if not switch["on"]:
                return
            scheme = urllib.parse.urlsplit(request.url).scheme
            if scheme in NETWORK_SCHEMES and not _is_local(request.url):
                return  # blocked by the route below, already recorded
            if not self._allowed(request.url):
                result.fail("request-failed", f"{request.url} ({request.failure})")

        def on_response(response):
            if switch["on"] and response.status >= 400 and not self._allowed(response.url):
                result.fail("http-status", f"{response.url} -> {response.status}")

        page.on("console", on_console)
        page.on("pageerror", on_pageerror)
        page.on("requestfailed", on_requestfailed)
        page.on("response", on_response)
        return switch

    def _route(self, context, sink: list) -> None:
        """Block every request to a host other than localhost and remember it."""

        def handler(route):
            url = route.request.url
            if urllib.parse.urlsplit(url).scheme in NETWORK_SCHEMES and not _is_local(url):
                sink.append(url)
                route.abort("blockedbyclient")
            else:
                route.continue_()

        context.route("**/*", handler)

    def check_page(self, context, url: str, rel: str, mode: str, external: list,
                   screenshot: Path | None = None, check_links: bool = True) -> PageResult:
        result = PageResult(path=rel, mode=mode)
        start = time.perf_counter()
        page = context.new_page()
        watch = self._watch(page, result)
        first_external = len(external)
        try:
            page.goto(url, wait_until="load", timeout=self.timeout_ms)
            refresh = self.targets.parse(self.html_dir / rel).refresh
            if refresh:  # a redirect page (index.html): check the page it leads to
                target = urllib.parse.urljoin(url, refresh)
                reason = self.targets.check(target, url[: len(url) - len(rel)], rel, set())
                if reason:
                    raise RuntimeError(f"redirect to {reason}")
                page.wait_for_url(target.split("#")[0] + "*", timeout=self.timeout_ms)
                page.wait_for_load_state("load", timeout=self.timeout_ms)
            if mode == "http":  # late requests (fonts, lazy scripts) must be seen too
                with contextlib.suppress(PlaywrightError):
                    page.wait_for_load_state("networkidle", timeout=min(self.timeout_ms, 10_000))
            probe = page.evaluate(PAGE_PROBE_JS, self.timeout_ms)
            self._judge(result, probe, url, rel, check_links=check_links)
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True, timeout=self.timeout_ms)
                result.screenshot = str(screenshot)
        except (PlaywrightError, RuntimeError) as err:  # a page that fails to load is broken
            result.fail("load", f"{type(err).__name__}: {str(err).splitlines()[0]}")
        finally:
            watch["on"] = False
            _forget(page)
        for blocked in external[first_external:]:
            result.fail("external-request", f"{blocked} (pages must work offline)")
        result.seconds = time.perf_counter() - start
        return result

    def _judge(self, result: PageResult, probe: dict, url: str, rel: str,
               check_links: bool) -> None:
        result.mathjax = probe["mathjax"]
        images = probe["images"]
        result.images = (sum(img["ok"] for img in images), len(images))
        for img in images:
            if not img["ok"]:
                result.fail("image", f"{img['src']} did not load")
        total, untypeset = probe["math_total"], probe["math_untypeset"]
        result.math = (total - len(untypeset), total)
        if probe["mathjax"] not in ("done", "absent"):
            result.fail("math", f"MathJax {probe['mathjax']}")
        if total and probe["mathjax"] == "absent":
            result.fail("math", f"{total} math element(s) but no MathJax script on the page")
        for text in untypeset[:5]:
            result.fail("math", f"not typeset: {text}")
        if len(untypeset) > 5:
            result.fail("math", f"... and {len(untypeset) - 5} more math elements not typeset")
        for text in probe["math_errors"]:
            result.fail("math-error", text)
        for text in probe["raw_math"]:
            result.fail("raw-math", text)
        if not check_links:
            return
        base = url[: len(url) - len(rel)]
        internal = [link for link in probe["links"] if link.startswith(base)]
        broken = []
        for link in internal:
            reason = self.targets.check(link, base, rel, set(probe["ids"]))
            if reason:
                broken.append(reason)
        result.links = (len(internal) - len(broken), len(internal))
        for reason in dict.fromkeys(broken):
            result.fail("link", reason)

    def check_search(self, context, base: str, word: str, mode: str, external: list,
                     via_form: bool = False, start_page: str = "") -> PageResult:
        """Search for ``word`` on the search page (or through a page's search box)."""
        label = f"search box: {word} ({start_page})" if via_form else f"search.html?q={word}"
        result = PageResult(path=label, mode=mode)
        start = time.perf_counter()
        page = context.new_page()
        watch = self._watch(page, result)
        first_external = len(external)
        try:
            if via_form:
                page.goto(base + start_page, wait_until="load", timeout=self.timeout_ms)
                # Let the page settle first: leaving it would cancel its font requests.
                with contextlib.suppress(PlaywrightError):
                    page.wait_for_load_state("networkidle", timeout=min(self.timeout_ms, 10_000))
                page.evaluate(SETTLE_JS, self.timeout_ms)
                submitted = page.evaluate(
                    """(word) => {
                      const input = document.querySelector('form input[name="q"]');
                      if (!input) return false;
                      input.value = word; input.form.submit(); return true;
                    }""", word)
                if not submitted:
                    raise RuntimeError(f"no search box (form input name=q) on {start_page}")
                page.wait_for_url("**/search.html?*", timeout=self.timeout_ms)
            else:
                query = urllib.parse.urlencode({"q": word})
                page.goto(f"{base}search.html?{query}", wait_until="load",
                          timeout=self.timeout_ms)
            page.wait_for_function(SEARCH_DONE_JS, timeout=self.timeout_ms)
            found = page.evaluate(SEARCH_RESULTS_JS)
            if not found["hrefs"]:
                result.fail("search", f"no result for {word!r}: {found['summary'].strip()}")
            for href in found["hrefs"]:
                if href.startswith(base):
                    reason = self.targets.check(href, base, "search.html", set())
                    if reason:
                        result.fail("search", f"result link broken: {reason}")
            result.links = (len(found["hrefs"]), len(found["hrefs"]))
        except (PlaywrightError, RuntimeError) as err:
            result.fail("search", f"{type(err).__name__}: {str(err).splitlines()[0]}")
        finally:
            watch["on"] = False
            _forget(page)
        for blocked in external[first_external:]:
            result.fail("external-request", f"{blocked} (pages must work offline)")
        result.seconds = time.perf_counter() - start
        return result

    def _start_page(self, pages: list[str]) -> str:
        """The page a reader lands on: where ``index.html`` redirects to, else the first."""
        if "index.html" in pages:
            refresh = self.targets.parse(self.html_dir / "index.html").refresh
            if not refresh:
                return "index.html"
            target = self.targets.file_for(urllib.parse.urlsplit(refresh).path)
            if target is not None:
                return target.relative_to(self.html_dir).as_posix()
        return pages[0]

    def run(self, *, screenshots: Path | None = None, search: str | None = None,
            file_pass: bool = True, pages: list[str] | None = None,
            progress=None) -> Report:
        """Check ``pages`` (default: every page); see the module docstring."""
        start = time.perf_counter()
        report = Report(html_dir=self.html_dir)
        pages = list_pages(self.html_dir) if pages is None else list(pages)
        if not pages:
            raise FileNotFoundError(f"no .html pages in {self.html_dir}")
        missing = [rel for rel in pages if not (self.html_dir / rel).is_file()]
        if missing:
            raise FileNotFoundError(f"pages not in {self.html_dir}: {', '.join(missing)}")
        file_base = self.html_dir.as_uri() + "/"
        external: list[str] = []
        with serve(self.html_dir) as base, self.browser() as context:
            self._route(context, external)
            for rel in pages:
                shot = None if screenshots is None else Path(screenshots) / (
                    rel[: -len(".html")] + ".png")
                result = self.check_page(context, base + rel, rel, "http", external, shot)
                report.pages.append(result)
                if progress:
                    progress(result)
            if file_pass:
                for rel in pages:
                    result = self.check_page(context, file_base + rel, rel, "file", external,
                                             check_links=False)
                    report.pages.append(result)
                    if progress:
                        progress(result)
            if search is not None:
                if not (self.html_dir / "search.html").is_file():
                    missing = PageResult(path=f"search.html?q={search}")
                    missing.fail("search", "the build has no search.html")
                    report.search.append(missing)
                else:
                    checks = [(base, "http", False), (base, "http", True)]
                    if file_pass:
                        checks.append((file_base, "file", False))
                    start_page = self._start_page(pages)
                    for url_base, mode, via_form in checks:
                        result = self.check_search(context, url_base, search, mode, external,
                                                   via_form=via_form, start_page=start_page)
                        report.search.append(result)
                        if progress:
                            progress(result)
        report.seconds = time.perf_counter() - start
        return report


def _forget(page) -> None:
    """Close ``page`` after clearing its storage, so that every page is checked on a first
    visit (a theme that reads an unset localStorage entry must not fail only on the first
    page checked)."""
    with contextlib.suppress(Exception):
        page.evaluate("() => { localStorage.clear(); sessionStorage.clear(); }")
    page.close()


def _is_local(url: str) -> bool:
    return (urllib.parse.urlsplit(url).hostname or "") in LOCAL_HOSTS


def check_book(html_dir, *, screenshots=None, search=None, file_pass=True, chromium=None,
               timeout_s=60.0, allow=None, pages=None, progress=None) -> Report:
    """Check the built book in ``html_dir``; returns a :class:`Report` (see module docstring)."""
    html_dir = Path(html_dir)
    if not html_dir.is_dir():
        raise FileNotFoundError(f"html_dir: no such folder {html_dir}")
    checker = BookChecker(html_dir, chromium=chromium, timeout_s=timeout_s, allow=allow)
    return checker.run(screenshots=screenshots, search=search, file_pass=file_pass, pages=pages,
                       progress=progress)


def format_row(result: PageResult) -> str:
    status = "ok" if result.ok else f"FAIL({len(result.failures)})"
    images = "{}/{}".format(*result.images)
    math = "{}/{}".format(*result.math)
    links = "{}/{}".format(*result.links) if result.mode == "http" else "-"
    return (f"{status:<9} {result.mode:<4} {result.path:<40} {images:>7} {math:>9} "
            f"{links:>9} {result.mathjax or '-':<11} {result.seconds:6.1f}s")


HEADER = (f"{'status':<9} {'via':<4} {'page':<40} {'images':>7} {'math':>9} {'links':>9} "
          f"{'mathjax':<11} {'time':>7}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Open every page of a built HTML book in headless Chromium and check that "
                    "it works offline: no JavaScript errors, images load, math typeset, "
                    "internal links resolve; saves a screenshot of each page.")
    parser.add_argument("html_dir", type=Path, help="the built HTML folder (_build/html)")
    parser.add_argument("--screenshots", type=Path, default=None,
                        help="folder for the screenshots (default: <html_dir>/../screenshots)")
    parser.add_argument("--no-screenshots", action="store_true", help="take no screenshots")
    parser.add_argument("--search", metavar="WORD", default=None,
                        help="require the search page to find WORD (http and file://)")
    parser.add_argument("--no-file-pass", action="store_true",
                        help="skip the second pass that opens every page from disk (file://)")
    parser.add_argument("--chromium", default=None,
                        help="Chromium executable (default: $CHROMIUM or /usr/bin/chromium)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for a page, MathJax or the search (default 60)")
    parser.add_argument("--allow", action="append", default=[], metavar="REGEX",
                        help="ignore console errors, JS errors and failed requests matching "
                             "REGEX (repeatable; for known, accepted problems)")
    parser.add_argument("--page", action="append", default=None, metavar="PATH",
                        help="check only this page (relative to html_dir; repeatable)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    args = parser.parse_args(argv)

    if not args.html_dir.is_dir():
        print(f"check_book: no such folder {args.html_dir} (build the book first: make book)",
              file=sys.stderr)
        return 2
    screenshots = None
    if not args.no_screenshots:
        screenshots = args.screenshots or args.html_dir.resolve().parent / "screenshots"
        if screenshots.is_dir():  # stale screenshots of removed pages would mislead
            for old in screenshots.rglob("*.png"):
                old.unlink()
    rows: list[str] = []

    def progress(result: PageResult) -> None:
        if not rows:
            print(HEADER)
        rows.append(format_row(result))
        print(rows[-1], flush=True)

    try:
        report = check_book(args.html_dir, screenshots=screenshots, search=args.search,
                            file_pass=not args.no_file_pass, chromium=args.chromium,
                            timeout_s=args.timeout, allow=args.allow, pages=args.page,
                            progress=progress)
    except (FileNotFoundError, ImportError) as err:
        print(f"check_book: {err}", file=sys.stderr)
        return 2
    n_pages = len({r.path for r in report.pages})
    if args.json:
        args.json.write_text(json.dumps({
            "html_dir": str(report.html_dir), "seconds": report.seconds, "ok": report.ok,
            "results": [{"page": r.path, "via": r.mode, "ok": r.ok, "images": r.images,
                         "math": r.math, "links": r.links, "mathjax": r.mathjax,
                         "seconds": r.seconds, "screenshot": r.screenshot,
                         "failures": r.failures} for r in report.pages + report.search],
        }, indent=1))
    if screenshots is not None:
        print(f"screenshots: {screenshots}")
    if report.ok:
        print(f"check_book: all {n_pages} pages passed in {report.seconds:.1f}s")
        return 0
    # The same problem on many pages (a theme script, say) is listed once, with its pages.
    grouped: dict = {}
    for mode, path, kind, detail in report.failures:
        grouped.setdefault((kind, detail), []).append(f"{path} [{mode}]")
    print(f"\ncheck_book: {len(report.failures)} failure(s), {len(grouped)} distinct, "
          f"in {report.seconds:.1f}s:")
    for (kind, detail), where in grouped.items():
        where = list(dict.fromkeys(where))
        print(f"  {kind}: {detail}\n      on {len(where)}: {', '.join(where)}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
