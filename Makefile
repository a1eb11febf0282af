# Two commands do all the set-up on a fresh machine:
#   make report   build the environment and write the HTML report of the bundled example model
#   make test     build the environment and run the tests
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: report test bench bench-jax bench-torch site clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]' -c constraints.txt
	# The tf_keras engine: tf_keras requires the `tensorflow` distribution, which would put a second
	# TensorFlow over tensorflow-cpu; tensorflow-cpu provides the module, so no dependencies here.
	$(BIN)/pip install --quiet --no-deps tf_keras -c constraints.txt
	$(BIN)/pip install --quiet tensorflow-probability -c constraints.txt
	# Keras 3 on PyTorch (tests/test_keras3_torch.py): the CPU build pinned in constraints.txt, from this
	# machine's disk (15 s, +870 MB measured); an unpinned torch would take a CUDA build of several GB.
	$(BIN)/pip install --quiet -e '.[torch]' -c constraints.txt
	touch $(STAMP)

report: $(STAMP)
	$(BIN)/lossmap explain lossmap.examples:multitask
	$(BIN)/lossmap report --example multitask -o multitask.lossmap.html

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/bench_check.py

# the same bench model on Keras 3 with JAX and with PyTorch (bench/README.md)
bench-jax: $(STAMP)
	$(BIN)/python bench/bench_backend.py --backend jax

bench-torch: $(STAMP)
	$(BIN)/python bench/bench_backend.py --backend torch --warmup 1

# The learning site (site/README.md): every page from models lossmap analyses now, into _site/
site: $(STAMP)
	$(BIN)/python site/build.py --out _site

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
