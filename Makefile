# Bootstraps .venv from the project's own files; every target below builds it first if missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-avx2 bench regenerate regenerate-paper notebooks site clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[test]"
	touch $@

demo: $(VENV)/.installed  ## quick demo on the synthetic dataset (a few minutes on CPU)
	$(PY) -m mkdlib demo --out demo

test: $(VENV)/.installed  ## the test suite (real-data tests skip without MKDLIB_DATA / MKDLIB_VGG16_WEIGHTS)
	$(PY) -m pytest -q

# The numeric tests again with the AVX2 kernels forced, so that an AVX-512 / AMX machine also checks the
# paths an AVX2-only CPU takes (the identities they test must not depend on the CPU's kernels).
NUMERIC_TESTS := tests/test_localization.py tests/test_losses.py tests/test_train.py tests/test_scoring.py \
	tests/test_metrics.py tests/test_models.py tests/test_postprocess.py
test-avx2: $(VENV)/.installed  ## the numeric tests on the AVX2 kernel paths (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA)
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 $(PY) -m pytest -q $(NUMERIC_TESTS)

bench: $(VENV)/.installed  ## throughput against the released code's way of computing
	$(PY) benchmarks/bench.py

regenerate: $(VENV)/.installed  ## every notebook, smoke profile, into results/smoke/ (never the paper's results/)
	$(PY) -m mkdlib.paper.regenerate --profile smoke

regenerate-paper: $(VENV)/.installed  ## every notebook with the paper's protocol (days on CPU)
	$(PY) -m mkdlib.paper.regenerate --profile paper

regenerate-gpu:  ## train the notebooks' runs on a GPU machine, no papermill needed: runs.tar.gz + log in $OUT or results/gpu (ARGS="--only table6")
	bash scripts/regenerate_gpu.sh $(ARGS)

# The executed copies committed in results/executed/, from the committed run records only (nothing is trained
# but the quickstart's demo): the paper profile, and the ablation notebooks in the fast-v1 profile, whose
# records those are (results/fast-v1/). Heatmaps and the method notebook need MKDLIB_DATA (mkdlib's layout: mvtec/bottle, ...) and
# MKDLIB_VGG16_WEIGHTS; without them they say "not drawn" or fall back to the synthetic set.
PAPER_NOTEBOOKS := 00_quickstart 01_method table2_one_class_detection table3_mvtec_detection \
	table4_figure6_mvtec_localization table5_retinal_oct table6_medical table1_table11_interpretability \
	figure1_heatmaps figure4_tables9_10_cloner_size fast_vs_paper
FAST_NOTEBOOKS := figure3_tables7_8_layer_ablation figure5_tables9_10_loss_ablation
notebooks: $(VENV)/.installed  ## every notebook executed on the committed records (nothing trained) into results/executed/
	$(PY) -m mkdlib.paper.regenerate --profile paper --records-only --runs-dir results/runs --executed results/executed \
		--only $(PAPER_NOTEBOOKS)
	$(PY) -m mkdlib.paper.regenerate --profile fast-v1 --records-only --runs-dir results/runs --executed results/executed \
		--only $(FAST_NOTEBOOKS) -p 'classes={"mvtec": ["bottle"]}'

site: $(VENV)/.installed  ## the results as a static site in site/: an index (paper vs ours), a page per table and per executed notebook
	$(PY) -m mkdlib.paper.site --results results --out site

clean:
	rm -rf $(VENV) demo .pytest_cache site
