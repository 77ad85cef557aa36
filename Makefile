# bornfield: the two commands of the README.
#   make demo   set up everything, run the demo campaign (config/config.yaml) end to end
#   make test   set up everything, run the test suite
#   make label HOURS=2 RANKS=1   add DFT labels to the committed ledger (data/ledger) within a budget
#   make chain  every stage on this machine (coarse DFT labels, training, MD; config/chain.yaml)
#   make models  retrain the shipped committees (models/li3po4) on the ledger (then make models-polar; commit models/)
#   make models-potential  retrain only the potentials of models/li3po4 on its own rows and split (config/models.yaml)
#   make models-polar  the accuracy setting of the Born model on the split of models/li3po4 -> models/li3po4-polar
#   make reference  run the pending conditions of config/reference.yaml one by one (commit results-reference/analysis after each)
#   make results    sweep tables, figures and RESULTS.md from the stored reference analysis (under a minute)
# Both are idempotent: with nothing changed, set-up is a few stamp checks.

VENV      ?= .venv
PYTHON    ?= python3
CORES     ?= 2
CONFIG    ?= config/config.yaml
STAMPS    := .make
BIN       := $(VENV)/bin
PYTEST_ARGS ?=
# label ledger: wall-time budget (h), MPI ranks per QE job and labellers side by side of `make label`
HOURS     ?= 1
RANKS     ?= 2
WORKERS   ?= 1
LEDGER    ?= data/ledger
# rule commands call `bornfield` and MPI launchers from the venv
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo chain test setup system label models models-potential models-polar figures report lint dryrun clean-results reference results stability

demo: setup
	$(BIN)/snakemake --cores $(CORES) --configfile $(CONFIG)
	$(BIN)/snakemake --cores $(CORES) --configfile $(CONFIG) --report results/report.html

# the full chain: structures -> coarse DFT/DFPT -> training (2 active-learning generations) -> MD
chain: setup
	$(BIN)/snakemake --cores $(CORES) --configfile config/chain.yaml
	$(BIN)/snakemake --cores $(CORES) --configfile config/chain.yaml --report results-chain/report.html

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# run queue entries of the committed label ledger for HOURS of wall time (commit data/ afterwards)
label: setup
	$(BIN)/bornfield label --hours $(HOURS) --ranks $(RANKS) --workers $(WORKERS) --ledger $(LEDGER)

# train the committees of config/models.yaml on the ledger and write the model set (train.ship_to)
MODELS_CONFIG ?= config/models.yaml
models: setup
	$(BIN)/snakemake ship_models --cores $(CORES) --configfile $(MODELS_CONFIG)

# the potential committee of MODELS_CONFIG retrained on the ledger rows and split of MODEL_SET (its Pedone
# baseline refitted to those training rows, members pre-trained if MODELS_CONFIG asks for it), shipped with
# MODEL_SET's Born committee and row baseline in place of MODEL_SET, and with POLAR_SET's Born committee in
# place of POLAR_SET if that exists (same rows and split; logs in POTENTIAL_WORK/logs)
POTENTIAL_WORK ?= results-models-potential
models-potential: setup
	rm -rf $(POTENTIAL_WORK)/set && mkdir -p $(POTENTIAL_WORK)/logs $(POTENTIAL_WORK)/models
	$(BIN)/bornfield train set-rows --models $(MODEL_SET) --ledger $(LEDGER) \
	  --output $(POTENTIAL_WORK)/dataset.extxyz --split-json $(POTENTIAL_WORK)/split.json
	$(BIN)/bornfield train fit-baseline --config $(MODELS_CONFIG) --dataset $(POTENTIAL_WORK)/dataset.extxyz \
	  --split-file $(POTENTIAL_WORK)/split.json --output $(POTENTIAL_WORK)/pair_baseline.json \
	  > $(POTENTIAL_WORK)/logs/fit_baseline.log 2>&1 || { tail -5 $(POTENTIAL_WORK)/logs/fit_baseline.log; exit 1; }
	$(BIN)/python -c "from bornfield.config import load_config; print(*range(load_config('$(MODELS_CONFIG)')['train']['potential']['committee']))" \
	  | tr ' ' '\n' | xargs -P $(CORES) -I{} sh -c 'PRETRAIN=$$($(BIN)/python -c "from bornfield.config import load_config; print(load_config(\"$(MODELS_CONFIG)\")[\"train\"][\"potential\"][\"pretrain\"][\"dataset\"] or \"\")"); \
	  INIT=""; if [ -n "$$PRETRAIN" ]; then \
	    $(BIN)/bornfield train pretrain --config $(MODELS_CONFIG) --output-dir $(POTENTIAL_WORK)/pretrain --member {} \
	      --pair-baseline $(POTENTIAL_WORK)/pair_baseline.json --no-progress > $(POTENTIAL_WORK)/logs/pretrain_{}.log 2>&1 \
	      || { tail -5 $(POTENTIAL_WORK)/logs/pretrain_{}.log; exit 255; }; \
	    INIT="--init-model $(POTENTIAL_WORK)/pretrain/potential_{}.pt"; fi; \
	  $(BIN)/bornfield train potential --config $(MODELS_CONFIG) --dataset $(POTENTIAL_WORK)/dataset.extxyz \
	  --split-file $(POTENTIAL_WORK)/split.json --output-dir $(POTENTIAL_WORK)/models --member {} $$INIT \
	  --pair-baseline $(POTENTIAL_WORK)/pair_baseline.json --no-progress > $(POTENTIAL_WORK)/logs/potential_{}.log 2>&1 \
	  || { tail -5 $(POTENTIAL_WORK)/logs/potential_{}.log; exit 255; }'
	$(BIN)/bornfield train ship --dataset $(POTENTIAL_WORK)/dataset.extxyz --split $(POTENTIAL_WORK)/split.json --ledger $(LEDGER) \
	  --potential $$(ls $(POTENTIAL_WORK)/models/potential_*.pt | grep -E '/potential_[0-9]+\.pt$$') --born $(MODEL_SET)/born_[0-9]*.pt \
	  --baseline $(MODEL_SET)/born_row_*.pt --output-dir $(POTENTIAL_WORK)/set > $(POTENTIAL_WORK)/logs/ship.log 2>&1 \
	  || { tail -5 $(POTENTIAL_WORK)/logs/ship.log; exit 1; }
	rm -rf $(MODEL_SET) && cp -r $(POTENTIAL_WORK)/set $(MODEL_SET)
	$(BIN)/bornfield train table --models $(MODEL_SET)
	if [ -d $(POLAR_SET) ]; then \
	  $(BIN)/bornfield train ship --dataset $(POTENTIAL_WORK)/dataset.extxyz --split $(POTENTIAL_WORK)/split.json \
	    --ledger $(LEDGER) --potential $(MODEL_SET)/potential_[0-9]*.pt --born $(POLAR_SET)/born_[0-9]*.pt \
	    --baseline $(MODEL_SET)/born_row_*.pt --output-dir $(POTENTIAL_WORK)/polar_set > $(POTENTIAL_WORK)/logs/ship_polar.log 2>&1 \
	    || { tail -5 $(POTENTIAL_WORK)/logs/ship_polar.log; exit 1; }; \
	  rm -rf $(POLAR_SET) && cp -r $(POTENTIAL_WORK)/polar_set $(POLAR_SET) && $(BIN)/bornfield train table --models $(POLAR_SET); \
	fi

# polar Born committee (config/models_polar.yaml) trained on the ledger rows and split of MODEL_SET,
# shipped with MODEL_SET's potentials and row baseline as POLAR_SET (logs in POLAR_WORK/logs)
POLAR_CONFIG ?= config/models_polar.yaml
MODEL_SET    ?= models/li3po4
POLAR_SET    ?= models/li3po4-polar
POLAR_WORK   ?= results-models-polar
models-polar: setup
	mkdir -p $(POLAR_WORK)/logs
	$(BIN)/bornfield train set-rows --models $(MODEL_SET) --ledger $(LEDGER) \
	  --output $(POLAR_WORK)/dataset.extxyz --split-json $(POLAR_WORK)/split.json
	$(BIN)/python -c "from bornfield.config import load_config; print(*range(load_config('$(POLAR_CONFIG)')['train']['born']['committee']))" \
	  | tr ' ' '\n' | xargs -P $(CORES) -I{} sh -c '$(BIN)/bornfield train born --config $(POLAR_CONFIG) \
	  --dataset $(POLAR_WORK)/dataset.extxyz --split-file $(POLAR_WORK)/split.json --output-dir $(POLAR_WORK)/models \
	  --member {} --no-progress > $(POLAR_WORK)/logs/born_{}.log 2>&1 || { tail -5 $(POLAR_WORK)/logs/born_{}.log; exit 255; }'
	$(BIN)/bornfield train ship --dataset $(POLAR_WORK)/dataset.extxyz --split $(POLAR_WORK)/split.json --ledger $(LEDGER) \
	  --potential $(MODEL_SET)/potential_[0-9]*.pt --born $(POLAR_WORK)/models/born_[0-9]*.pt \
	  --baseline $(MODEL_SET)/born_row_*.pt --output-dir $(POLAR_SET) > $(POLAR_WORK)/logs/ship.log 2>&1 \
	  || { tail -5 $(POLAR_WORK)/logs/ship.log; exit 1; }
	$(BIN)/bornfield train table --models $(POLAR_SET)

# the conditions of config $(1) without a current analysis record in $(2)/analysis, one Snakemake
# target after another (each record can be committed as soon as it is written)
define run_pending_conditions
	for c in $$($(BIN)/bornfield md list --config $(1) --pending-in $(2)/analysis); do \
	  $(BIN)/snakemake $(2)/analysis/$$c.json --cores $(CORES) --configfile $(1) || exit 1; \
	done
endef

# the reference campaign behind RESULTS.md: its per-condition analysis records are committed as they
# finish (results-reference/analysis), so the campaign accumulates across working stretches; a record
# made with other model files than config/reference.yaml's md.models runs again
REFERENCE ?= config/reference.yaml
REFERENCE_DIR ?= results-reference
reference: setup
	$(call run_pending_conditions,$(REFERENCE),$(REFERENCE_DIR))
	$(MAKE) results

# field-MD stability with the shipped models (config/stability.yaml, 100 ps per condition): pending
# conditions one after another, then results-stability/STABILITY.md; commit results-stability/analysis
STABILITY ?= config/stability.yaml
STABILITY_DIR ?= results-stability
stability: setup
	$(call run_pending_conditions,$(STABILITY),$(STABILITY_DIR))
	$(BIN)/bornfield analyze stability --config $(STABILITY) --results-dir $(STABILITY_DIR)

results: setup
	$(BIN)/bornfield analyze sweep $(REFERENCE_DIR)/analysis --output-dir $(REFERENCE_DIR)/analysis --config $(REFERENCE)
	$(BIN)/bornfield plot all --analysis-dir $(REFERENCE_DIR)/analysis --output-dir $(REFERENCE_DIR)/figures --config $(REFERENCE)
	$(BIN)/bornfield analyze results --config $(REFERENCE) --results-dir $(REFERENCE_DIR) --output RESULTS.md

setup: $(STAMPS)/system.stamp $(STAMPS)/venv.stamp

system: $(STAMPS)/system.stamp

$(STAMPS)/system.stamp: scripts/install-system.sh
	bash scripts/install-system.sh
	@mkdir -p $(STAMPS) && touch $@

$(STAMPS)/venv.stamp: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: pip takes the CPU file on disk (an unpinned torch pulls CUDA)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,mpich]'
	@mkdir -p $(STAMPS) && touch $@

figures: setup
	$(BIN)/snakemake --cores $(CORES) --configfile $(CONFIG) figures

report: setup
	$(BIN)/snakemake --cores $(CORES) --configfile $(CONFIG) --report results/report.html

lint: setup
	$(BIN)/snakemake --lint --configfile $(CONFIG)

dryrun: setup
	for c in config/config.yaml config/chain.yaml config/reference.yaml config/stability.yaml config/paper.yaml config/models.yaml .test/config.yaml; do \
	  $(BIN)/snakemake -n --configfile $$c --quiet || exit 1; done

clean-results:
	rm -rf results results-chain .snakemake
