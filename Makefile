# tidepool: `make demo` runs the main job on the bundled sample data, `make test` runs the tests.
# Both create a virtual environment in .venv on first use (needs only Python 3.11+ and make).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_INDEX ?= demo-index
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	@echo "== creating $(VENV) and installing tidepool (first run only)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	@rm -rf $(DEMO_INDEX)
	@echo "== ingest: 10,000 SIFT vectors (128-d) into $(DEMO_INDEX)/ through the write-ahead log"
	$(BIN)/tidepool ingest $(DEMO_INDEX) --input sample_data/siftsmall_base.npy
	@echo "== compact: write-ahead log -> immutable segment"
	$(BIN)/tidepool compact $(DEMO_INDEX)
	@echo "== query: 100 queries, k = 10, exact search; results as JSON lines"
	$(BIN)/tidepool query $(DEMO_INDEX) --input sample_data/siftsmall_query.npy -k 10 --format jsonl > $(DEMO_INDEX)/results.jsonl
	@echo "== recall@10 against the shipped ground truth"
	$(BIN)/python bench/recall.py $(DEMO_INDEX)/results.jsonl sample_data/siftsmall_groundtruth.npy -k 10
	@echo "== the first two results"
	@head -n 2 $(DEMO_INDEX)/results.jsonl
	@echo "== build-hnsw: an HNSW graph for the segment, its default ef_search calibrated on its own rows"
	$(BIN)/tidepool build-hnsw $(DEMO_INDEX)
	@echo "== query through the graph, and its recall@10"
	$(BIN)/tidepool query $(DEMO_INDEX) --input sample_data/siftsmall_query.npy -k 10 --format jsonl > $(DEMO_INDEX)/results-hnsw.jsonl
	$(BIN)/python bench/recall.py $(DEMO_INDEX)/results-hnsw.jsonl sample_data/siftsmall_groundtruth.npy -k 10
	@echo "== stats"
	$(BIN)/tidepool stats $(DEMO_INDEX)

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[bench]'
	$(BIN)/python bench/bench_foundation.py

clean:
	rm -rf $(VENV) $(DEMO_INDEX) .pytest_cache
