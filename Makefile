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
	@rm -rf $(DEMO_INDEX) $(DEMO_INDEX)-copy
	@echo "== ingest: 10,000 SIFT vectors (128-d) into $(DEMO_INDEX)/ through the write-ahead log"
	$(BIN)/tidepool ingest $(DEMO_INDEX) --input sample_data/siftsmall_base.npy
	@echo "== compact: write-ahead log -> immutable segment"
	$(BIN)/tidepool compact $(DEMO_INDEX)
	@echo "== query: 100 queries, k = 10, exact search; results as JSON lines"
	$(BIN)/tidepool query $(DEMO_INDEX) --input sample_data/siftsmall_query.npy -k 10 --exact --format jsonl > $(DEMO_INDEX)/results.jsonl
	@echo "== recall@10 against the shipped ground truth"
	$(BIN)/python bench/recall.py $(DEMO_INDEX)/results.jsonl sample_data/siftsmall_groundtruth.npy -k 10
	@echo "== the first two results"
	@head -n 2 $(DEMO_INDEX)/results.jsonl
	@echo "== get: two rows back by id (attributes and, without --no-vectors, the stored vectors); count: live rows"
	$(BIN)/tidepool get $(DEMO_INDEX) --id 0 --id 9999 --no-vectors --format jsonl
	$(BIN)/tidepool count $(DEMO_INDEX)
	@echo "== build-hnsw and build-ivf: both indexes per segment, each calibrated on the segment's own rows"
	$(BIN)/tidepool build-hnsw $(DEMO_INDEX)
	$(BIN)/tidepool build-ivf $(DEMO_INDEX)
	@echo "== quantize: SQ8 codes per segment (per-dimension ranges trained on a sample); a third access path, the cascade codes -> exact f32 rerank"
	$(BIN)/tidepool quantize $(DEMO_INDEX) --codec sq8
	@echo "== query --recall 0.99 --explain: of HNSW, IVF, the SQ8 cascade and exact scan, the planner picks the cheapest whose calibrated recall reaches 0.99, and says which"
	$(BIN)/tidepool query $(DEMO_INDEX) --input sample_data/siftsmall_query.npy -k 10 --recall 0.99 --explain --format jsonl > $(DEMO_INDEX)/results-planned.jsonl
	@tail -n 1 $(DEMO_INDEX)/results-planned.jsonl
	@grep -v '"explain"' $(DEMO_INDEX)/results-planned.jsonl > $(DEMO_INDEX)/results-planned-only.jsonl
	$(BIN)/python bench/recall.py $(DEMO_INDEX)/results-planned-only.jsonl sample_data/siftsmall_groundtruth.npy -k 10
	@echo "== stats --recall-queries: the recall the default paths deliver on these queries, against exact search, with a 95% interval"
	$(BIN)/tidepool stats $(DEMO_INDEX) --recall-queries sample_data/siftsmall_query.npy --json | $(BIN)/python -c "import json, sys; print(json.load(sys.stdin)['recall_queries'])"
	@echo "== export: every live row to Parquet, streamed; re-ingested into a new index with the same ids and vector bits"
	$(BIN)/tidepool export $(DEMO_INDEX) --output $(DEMO_INDEX)/rows.parquet
	$(BIN)/tidepool ingest $(DEMO_INDEX)-copy --input $(DEMO_INDEX)/rows.parquet
	@echo "== stats --verify: every checksum re-read"
	$(BIN)/tidepool stats $(DEMO_INDEX) --verify

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[bench]'
	$(BIN)/python bench/bench_foundation.py

clean:
	rm -rf $(VENV) $(DEMO_INDEX) $(DEMO_INDEX)-copy .pytest_cache
