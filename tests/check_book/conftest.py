"""Self-tests of scripts/check_book.py; they need Chromium, so `make test` does not run them.

They run only when this folder (or a file in it) is named on the pytest command line, as
`make check-book` does (`pytest tests/check_book`); a plain `pytest` (testpaths) skips the
folder without collecting it.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def _named_explicitly(config) -> bool:
    for arg in config.invocation_params.args:
        path = Path(str(arg).split("::")[0])
        if not path.exists():
            continue
        path = path.resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


def pytest_ignore_collect(collection_path, config):
    path = Path(collection_path).resolve()
    if path != HERE / "conftest.py" and HERE in path.parents and not _named_explicitly(config):
        return True
    return None
