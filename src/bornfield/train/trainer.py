"""Training loops for the NN potential, the equivariant Born model and the paper-style baseline.

One loop serves the three model kinds (:data:`KINDS`): Adam (AdamW with
``weight_decay`` > 0), a linear learning-rate warm-up over ``warmup_epochs``,
gradient-norm clipping at ``grad_clip``, an exponential moving average of the
weights (``ema_decay``; validation, early stopping and the saved model use the
averaged weights), learning rate reduced on a validation plateau (``lr_schedule``
"plateau") or decayed along a half cosine from ``learning_rate`` to ``min_lr`` at
``max_epochs`` ("cosine", per epoch after the warm-up), early
stopping on the validation loss, the best parameters kept (the log and the
model file name the best epoch and its validation loss), a checkpoint written atomically after every epoch
(``<model>.ckpt``: resumable with ``resume=True``; a checkpoint of another run -- other training
data, split, settings, seed or start model -- is ignored with a warning), a metrics CSV and a tqdm
progress bar. Everything random derives from ``seed`` (initialisation and the
per-epoch shuffling), so a run is reproducible and a resumed run continues
exactly where the checkpoint left it.

Losses (per batch of structures):

* potential: ``w_E·mean((ΔE/N)²) + w_F·mean(ΔF²) + w_S·mean(Δσ²)``
  (eV/atom, eV/Å, eV/Å³; stress only for periodic structures that have it);
* born: mean squared error over all 9 components of the ASR-corrected tensor (e²);
* born_row: mean squared error of the field-axis row (e²).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from bornfield.errors import ConfigError, InputFileError
from bornfield.models.base import BornfieldModel
from bornfield.models.graph import collate
from bornfield.atomic import write_bytes
from bornfield.models.io import create_model, model_class, save_model
from bornfield.train.data import (
    Sample,
    attach_edges,
    born_scale_per_species,
    fit_atomic_energies,
    mean_born_per_species,
    mean_neighbours,
)

log = logging.getLogger(__name__)

KINDS = ("potential", "born", "born_row")
ARCH_KEYS = ("channels", "n_basis", "radial_hidden", "hidden")  # every model; a Born model also "interactions"
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def usable_samples(kind: str, samples: Sequence[Sample], charged_cells: str = "forces_only") -> list[Sample]:
    """Samples carrying the labels a model kind trains on.

    ``charged_cells`` (potential only): "include" (all labels), "forces_only"
    (energy/stress of charged cells ignored, see :func:`batch_loss`) or "exclude".
    """
    if kind == "potential":
        usable = [s for s in samples if s.energy is not None and s.forces is not None]
        if charged_cells == "exclude":
            usable = [s for s in usable if s.charge == 0]
        return usable
    return [s for s in samples if s.born is not None]


def potential_baseline(settings: dict[str, Any]) -> dict[str, Any] | None:
    """Hyperparameters of the physical baseline that ``train.potential`` asks for (None for ``baseline: none``).

    ``settings``: the ``train.potential`` block (keys ``baseline``, ``baseline_cutoff_A`` in Å,
    ``baseline_dsf_alpha_per_A`` in 1/Å; every one, no fallbacks); with ``pedone_fitted`` also
    ``baseline_parameters``, the hyperparameters written by ``bornfield train fit-baseline``
    (:func:`bornfield.train.pair_baseline.fit_pedone_baseline`), whose cutoff and damping must match.
    """
    name = str(settings["baseline"])
    if name == "none":
        return None
    if name not in ("pedone", "pedone_fitted"):
        raise ConfigError(f"train.potential.baseline = {name!r}: expected 'none', 'pedone' or 'pedone_fitted'")
    cutoff, alpha = float(settings["baseline_cutoff_A"]), float(settings["baseline_dsf_alpha_per_A"])
    if name == "pedone":
        from bornfield.models.baseline import pedone_baseline

        return pedone_baseline(cutoff, alpha)
    fitted = settings.get("baseline_parameters")
    if not fitted:
        raise ConfigError("train.potential.baseline = 'pedone_fitted' needs the fitted parameters: pass "
                          "--pair-baseline FILE (written by 'bornfield train fit-baseline')")
    if (float(fitted["cutoff"]), float(fitted["dsf_alpha"])) != (cutoff, alpha):
        raise ConfigError(f"the fitted pair baseline has cutoff {fitted['cutoff']} Å and dsf_alpha {fitted['dsf_alpha']} "
                          f"1/Å, train.potential asks for {cutoff} and {alpha}: refit it")
    return dict(fitted)


def baseline_labels(model: BornfieldModel, samples: Sequence[Sample]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Energies (eV, per sample) and forces (eV/Å, per sample) of the potential's physical baseline.

    Zeros for a model without a baseline. Attaches neighbour lists at the model's cutoff.
    """
    baseline = getattr(model, "baseline", None)
    if baseline is None:
        return np.zeros(len(samples)), [np.zeros((s.n_atoms, 3)) for s in samples]
    from bornfield.models.potential import forces_from_edge_gradient

    attach_edges(samples, model.species, model.cutoff)
    energies, forces = [], []
    for s in samples:
        graph = collate([s.edges], torch.float64)
        sites, grad = baseline.site_energies_and_edge_gradient(graph)
        energies.append(float(sites.sum()))
        forces.append(forces_from_edge_gradient(graph, grad).numpy())
    return np.array(energies), forces


def initialise_model(
    kind: str,
    species: Sequence[str],
    cutoff: float,
    architecture: dict[str, Any],
    train_samples: Sequence[Sample],
    seed: int,
    field_axis: int = 0,
    dtype: torch.dtype = torch.float32,
) -> BornfieldModel:
    """A new model whose data-derived constants come from the training samples.

    Sets the neighbour normalisation, reference energies and energy scale
    (potential), per-species mean charges (born) or rows (born_row), and the
    standardisation of the invariant features. A potential with a physical
    baseline (``architecture["baseline"]``, :func:`potential_baseline`) learns the
    residual to it, so its reference energies are fitted to ``E_DFT - E_baseline``
    and its energy scale is the RMS of ``F_DFT - F_baseline``.
    """
    attach_edges(train_samples, species, cutoff)
    hyper = {k: architecture[k] for k in ARCH_KEYS}
    hyper["avg_neighbours"] = mean_neighbours(train_samples)
    if kind == "potential":
        baseline = potential_baseline(architecture)
        if baseline is not None:
            hyper["baseline"] = baseline
        potential_architecture = architecture.get("architecture", "density")
        if potential_architecture == "edge":
            hyper["architecture"] = "edge"
            hyper["edge_layers"] = int(architecture["edge_layers"])
        elif potential_architecture == "message":
            hyper["architecture"] = "message"
        else:
            hyper["interactions"] = int(architecture.get("interactions", 1))
    elif kind == "born":
        means = mean_born_per_species(train_samples, species)
        hyper["mean_charges"] = {x: float(np.trace(z) / 3.0) for x, z in means.items()}
        hyper["interactions"] = int(architecture["interactions"])
        born_architecture = architecture.get("architecture", "density")
        if born_architecture == "density" and architecture.get("feature_squash", False):
            hyper["feature_squash"] = True
        if born_architecture in ("edge", "polar"):
            hyper["architecture"] = born_architecture
            hyper["edge_layers"] = int(architecture["edge_layers"])
        if hyper["interactions"] > 1 or born_architecture in ("edge", "polar"):
            hyper["charge_scales"] = born_scale_per_species(train_samples, species, hyper["mean_charges"])
    elif kind == "born_row":
        means = mean_born_per_species(train_samples, species)
        hyper["mean_rows"] = {x: z[field_axis].tolist() for x, z in means.items()}
        hyper["field_axis"] = int(field_axis)
    else:
        raise ConfigError(f"unknown model kind '{kind}' (expected one of {KINDS})")
    model = create_model(kind, species, cutoff, seed=seed, **hyper).to(dtype)
    # standardise invariant features over (a subset of) the training atoms
    graphs = [collate([s.edges for s in train_samples[start : start + 8]], dtype)
              for start in range(0, min(len(train_samples), 64), 8)]
    with torch.no_grad():
        if kind in ("born", "potential"):
            model.fit_normalisation(graphs)
        else:
            feats = []
            for graph in graphs:
                graph = graph.within(cutoff)
                a0, a1, a2 = model.density.densities(graph.species, graph.neighbours, graph.edge_vectors())
                feats.append(model.density.invariants(a0, a1, a2))
            model.density.fit_normalisation(torch.cat(feats))
    if kind == "potential":
        offsets, baseline_forces = baseline_labels(model, train_samples)
        residual = np.concatenate([s.forces - f for s, f in zip(train_samples, baseline_forces)])
        model.set_atomic_energies(fit_atomic_energies(train_samples, species, offsets))
        model.set_energy_scale(float(max(np.sqrt(np.mean(residual**2)), 1e-3)))
    return model


def fine_tuning_start(
    init_model: BornfieldModel, kind: str, species: Sequence[str], train_samples: Sequence[Sample], dtype: torch.dtype
) -> BornfieldModel:
    """A trainable copy of ``init_model`` for ``train_samples``: same kind, species and weights.

    A potential's per-species reference energies are re-fitted by least squares to the
    energies the copy misses on the training samples (labels of another code or another
    pseudopotential set differ by a constant per element).
    """
    if init_model.kind != kind:
        raise ConfigError(f"fine-tuning a '{kind}' model from a '{init_model.kind}' model")
    if list(init_model.species) != list(species):
        raise ConfigError(f"fine-tuning: the initial model knows {list(init_model.species)}, the data has {list(species)}")
    model = model_class(kind, init_model.hyperparameters)(**init_model.hyperparameters).to(dtype)
    model.load_state_dict(init_model.state_dict())
    if kind == "potential":
        attach_edges(train_samples, species, model.cutoff)
        zero = {x: 0.0 for x in species}
        model.set_atomic_energies(zero)
        with torch.no_grad():
            offsets = [float(model(collate([s.edges], dtype), forces=False)["energy"].sum()) for s in train_samples]
        model.set_atomic_energies(fit_atomic_energies(train_samples, species, offsets))
    return model


def batch_loss(
    model: BornfieldModel, batch: Sequence[Sample], weights: dict[str, float], training: bool
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one batch and its squared-error components (for logging)."""
    graph = collate([s.edges for s in batch], model.dtype)
    parts: dict[str, float] = {}
    if model.kind == "potential":
        need_stress = weights["stress"] > 0 and any(s.stress is not None for s in batch)
        out = model.forward(graph, forces=True, stress=need_stress, create_graph=training)
        n_atoms = torch.tensor([s.n_atoms for s in batch], dtype=torch.float64)
        e_ref = torch.tensor([s.energy for s in batch], dtype=torch.float64)
        # energies (and stress) of charged cells carry the compensating-background terms of the
        # DFT code; with charged_cells = "forces_only" they enter the force loss only
        neutral = torch.tensor([s.charge == 0 or weights["charged_energies"] > 0 for s in batch])
        f_ref = torch.from_numpy(np.concatenate([s.forces for s in batch])).to(out["forces"].dtype)
        f_err = (out["forces"] - f_ref).pow(2).mean()
        loss = weights["forces"] * f_err
        parts["forces_mse"] = float(f_err.detach())
        if neutral.any():
            e_err = ((out["energy"] - e_ref) / n_atoms)[neutral].pow(2).mean()
            loss = loss + weights["energy"] * e_err.to(f_err.dtype)
            parts["energy_mse"] = float(e_err.detach())
        if need_stress:
            sel = [k for k, s in enumerate(batch)
                   if s.stress is not None and s.edges.volume > 0 and bool(neutral[k])]
            if sel:
                s_ref = torch.from_numpy(np.stack([batch[k].stress for k in sel])).to(f_err.dtype)
                s_err = (out["stress"][sel] - s_ref).pow(2).mean()
                loss = loss + weights["stress"] * s_err
                parts["stress_mse"] = float(s_err.detach())
    elif model.kind == "born":
        z = model.forward(graph)
        ref = torch.from_numpy(np.concatenate([s.born for s in batch])).to(z.dtype)
        loss = (z - ref).pow(2).mean()
        parts["born_mse"] = float(loss.detach())
    else:
        rows = model.forward(graph)
        ref = torch.from_numpy(np.concatenate([s.born[:, model.field_axis, :] for s in batch])).to(rows.dtype)
        loss = (rows - ref).pow(2).mean()
        parts["row_mse"] = float(loss.detach())
    return loss, parts


class WeightAverage:
    """Exponential moving average of a model's floating-point state (``decay`` per optimiser step).

    The decay of update n is ``min(decay, (1 + n) / (10 + n))``, so the average follows
    the first steps closely (short runs and small datasets are not stuck near the
    initial weights). ``decay = 0`` keeps no average (:meth:`swap` is then a no-op).
    Buffers that are not trained (feature standardisation) are copied, not averaged.
    """

    def __init__(self, model: torch.nn.Module, decay: float, state: dict[str, torch.Tensor] | None = None,
                 updates: int = 0):
        self.decay = float(decay)
        self.model = model
        self.updates = int(updates)
        self.average = None
        if self.decay > 0:
            source = state if state is not None else model.state_dict()
            self.average = {k: v.detach().clone() for k, v in source.items()}

    @torch.no_grad()
    def update(self) -> None:
        if self.average is None:
            return
        decay = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        self.updates += 1
        for key, value in self.model.state_dict().items():
            if value.is_floating_point():
                self.average[key].lerp_(value, 1.0 - decay)
            else:
                self.average[key].copy_(value)

    def swap(self) -> None:
        """Exchange the model's weights and the average (call twice to restore)."""
        if self.average is None:
            return
        current = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.average)
        self.average = current


def _epoch_average(model, samples, weights, batch_size, optimizer=None, order=None, step=None):
    """Mean loss parts over ``samples``; with ``optimizer``, one training epoch (``step`` after each update)."""
    training = optimizer is not None
    model.train(training)
    totals: dict[str, float] = {}
    count = 0
    order = np.arange(len(samples)) if order is None else order
    for start in range(0, len(samples), batch_size):
        batch = [samples[k] for k in order[start : start + batch_size]]
        if training:
            optimizer.zero_grad(set_to_none=True)
            loss, parts = batch_loss(model, batch, weights, True)
            loss.backward()
            parts["grad_norm"] = step(loss) if step is not None else float("nan")
            optimizer.step()
        else:
            loss, parts = batch_loss(model, batch, weights, False)
        parts["loss"] = float(loss.detach())
        for key, value in parts.items():
            totals[key] = totals.get(key, 0.0) + value * len(batch)
        count += len(batch)
    model.train(False)
    return {k: v / max(count, 1) for k, v in totals.items()}


def _write_csv(path: Path, history: list[dict[str, float]]) -> None:
    keys: list[str] = []
    for row in history:
        keys.extend(k for k in row if k not in keys)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    write_bytes(path, buffer.getvalue().encode())


# settings that only say when to stop: changing them continues a run (e.g. a longer max_epochs)
RESUMABLE_SETTINGS = ("max_epochs", "patience")


def stage_settings(settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The settings of the first training stage and of the second (None without ``stage_two``).

    The second stage (a potential's ``stage_two`` block) starts from the first stage's
    best weights: ``epochs`` epochs at its own ``energy_weight``, a cosine learning rate
    from its ``learning_rate`` down to ``min_lr`` after ``warmup_epochs``, no early stop.
    """
    stage = dict(settings.get("stage_two") or {})
    first = {k: v for k, v in settings.items() if k != "stage_two"}
    epochs = int(stage.get("epochs", 0))
    if epochs <= 0:
        return first, None
    second = {**first, "energy_weight": float(stage["energy_weight"]), "learning_rate": float(stage["learning_rate"]),
              "warmup_epochs": int(stage["warmup_epochs"]), "max_epochs": epochs, "patience": epochs,
              "lr_schedule": "cosine"}
    return first, second


def run_identity(kind: str, train: Sequence[Sample], val: Sequence[Sample], settings: dict[str, Any], seed: int,
                 species: Sequence[str], training_data_hash: str | None, init_model: BornfieldModel | None) -> str:
    """sha256 of everything a checkpoint's training run depends on except :data:`RESUMABLE_SETTINGS`:
    model kind, data hash, the train/val rows (dataset indices), settings, seed, species and the
    start model's parameters. A checkpoint resumes only a run of the same identity. On a cosine
    schedule ``max_epochs`` sets the learning rate of every epoch, so it is part of the identity
    there (a longer cosine run is another run, not a continuation)."""
    digest = hashlib.sha256()
    cosine = settings.get("lr_schedule") == "cosine"
    resumable = [k for k in RESUMABLE_SETTINGS if not (cosine and k == "max_epochs")]
    kept = {k: v for k, v in settings.items() if k not in resumable}
    digest.update(json.dumps({"kind": kind, "data": training_data_hash, "train": [s.index for s in train],
                              "val": [s.index for s in val], "settings": kept, "seed": int(seed),
                              "species": list(species)}, sort_keys=True, default=str).encode())
    if init_model is not None:
        for name, tensor in sorted(init_model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def train_model(
    kind: str,
    train: Sequence[Sample],
    val: Sequence[Sample],
    settings: dict[str, Any],
    out_path: str | Path,
    seed: int,
    species: Sequence[str],
    metadata: dict[str, Any] | None = None,
    resume: bool = True,
    progress: bool = True,
    init_model: BornfieldModel | None = None,
) -> tuple[BornfieldModel, list[dict[str, float]]]:
    """Train one model and write it to ``out_path`` (plus ``.ckpt`` and ``.metrics.csv`` beside it).

    Args:
        kind: "potential", "born" or "born_row".
        train / val: labelled samples (validation drives early stopping and the LR schedule).
        settings: the model's config block (architecture, optimisation and schedule keys of
            train.schema.yaml -- every one, no fallbacks; a potential's also its loss weights,
            ``charged_cells`` and physical-baseline keys (:func:`potential_baseline`), a Born
            model's ``interactions``, a baseline's ``field_axis``)
            plus ``cutoff`` and ``dtype``.
        out_path: model file to write.
        seed: initialisation and shuffling seed.
        species: elements the model knows.
        metadata: stored in the model file (training-data hash, split, ...).
        resume: continue from ``<out_path>.ckpt`` if it exists.
        init_model: start from this trained model of the same kind (fine-tuning, e.g. after
            pre-training on other labels) instead of a random one: its architecture and weights
            are kept; a potential's reference energies are re-fitted to these training samples.
    """
    out_path = Path(out_path)
    ckpt_path = out_path.with_suffix(".ckpt")
    csv_path = out_path.with_suffix(".metrics.csv")
    # charged cells matter to the potential only (their energies carry the background terms)
    charged = str(settings["charged_cells"]) if kind == "potential" else "include"
    if charged not in ("include", "forces_only", "exclude"):
        raise ConfigError(f"charged_cells must be include, forces_only or exclude (got {charged!r})")
    train = usable_samples(kind, train, charged)
    val = usable_samples(kind, val, charged)
    n_charged = sum(1 for s in train if s.charge != 0)
    if kind == "potential" and n_charged:
        log.info("%d charged training cells (%s)", n_charged, charged)
    if not train:
        raise InputFileError(f"no training structures carry the labels a '{kind}' model needs")
    dtype = DTYPES[settings["dtype"]]
    cutoff = float(settings["cutoff"])
    attach_edges(list(train) + list(val), species, cutoff)
    weights = {  # the loss of a potential (Born models: the squared error of Z)
        "energy": float(settings["energy_weight"]),
        "forces": float(settings["force_weight"]),
        "stress": float(settings["stress_weight"]),
        "charged_energies": 1.0 if charged == "include" else 0.0,
    } if kind == "potential" else {}
    monitor = val if val else train
    if not val:
        log.warning("no validation structures: early stopping monitors the training loss")

    identity = run_identity(kind, train, val, settings, seed, species, (metadata or {}).get("training_data_hash"),
                            init_model)
    state: dict[str, Any] | None = None
    if resume and ckpt_path.exists():
        try:
            state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InputFileError(f"{ckpt_path}: unreadable training checkpoint: {exc}") from exc
        if state.get("run_identity") != identity:
            log.warning("%s belongs to another run (training data, split, settings, seed or start model differ): "
                        "starting afresh", ckpt_path)
            state = None
    if state is not None:
        model = model_class(kind, state["hyperparameters"])(**state["hyperparameters"]).to(dtype)
        model.load_state_dict(state["model"])
        log.info("resuming %s from epoch %d", ckpt_path, state["epoch"])
    elif init_model is not None:
        model = fine_tuning_start(init_model, kind, species, train, dtype)
    else:
        model = initialise_model(
            kind, species, cutoff, settings, train, seed, int(settings["field_axis"]) if kind == "born_row" else 0, dtype
        )
    attach_edges(list(train) + list(val), species, model.cutoff)  # longer with a physical baseline

    base_lr = float(settings["learning_rate"])
    weight_decay = float(settings["weight_decay"])
    if weight_decay > 0:
        optimizer = torch.optim.AdamW(model.parameters(), lr=base_lr, weight_decay=weight_decay)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=base_lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=float(settings["lr_factor"]), patience=int(settings["lr_patience"])
    )
    warmup_epochs = int(settings["warmup_epochs"])
    grad_clip = float(settings["grad_clip"])
    steps_per_epoch = max(1, math.ceil(len(train) / int(settings["batch_size"])))
    max_epochs = int(settings["max_epochs"])
    patience = int(settings["patience"])
    min_lr = float(settings["min_lr"])
    cosine = settings.get("lr_schedule", "plateau") == "cosine"

    def stop_reached(epoch: int, bad: int, lr: float) -> bool:
        """Early stop after ``epoch``: no improvement for ``patience`` epochs, or the plateau schedule below min_lr."""
        return bad >= patience or (not cosine and lr < min_lr and epoch + 1 >= warmup_epochs)

    history: list[dict[str, float]] = []
    best_loss, best_state, best_epoch, bad_epochs, start_epoch = math.inf, None, -1, 0, 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = list(state["history"])
        best_loss, best_epoch, bad_epochs = state["best_loss"], state["best_epoch"], state["bad_epochs"]
        best_state = state["best_model"]
        start_epoch = state["epoch"] + 1
        if stop_reached(state["epoch"], bad_epochs, optimizer.param_groups[0]["lr"]):
            start_epoch = max(start_epoch, max_epochs)  # the run had stopped early: nothing more to train
    counter = {"step": start_epoch * steps_per_epoch}
    average = WeightAverage(model, float(settings["ema_decay"]), (state or {}).get("average"), counter["step"])

    def before_step(loss: torch.Tensor) -> float:
        """Warm-up learning rate and gradient clipping for one optimiser step; returns the gradient norm."""
        counter["step"] += 1
        if counter["step"] <= warmup_epochs * steps_per_epoch:
            for group in optimizer.param_groups:
                group["lr"] = base_lr * counter["step"] / (warmup_epochs * steps_per_epoch)
        if not torch.isfinite(loss):
            raise InputFileError(f"training of {out_path} diverged (training loss {float(loss)})")
        parameters = [p for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(parameters, grad_clip if grad_clip > 0 else math.inf)
        return float(norm)

    class _Step:  # optimiser wrapper: the moving average follows every update
        def zero_grad(self, set_to_none=True):
            optimizer.zero_grad(set_to_none=set_to_none)

        def step(self):
            optimizer.step()
            average.update()

    batch_size = int(settings["batch_size"])
    bar = tqdm(range(start_epoch, max_epochs), desc=f"train {kind} {out_path.name}", disable=not progress,
               initial=start_epoch, total=max_epochs, mininterval=2.0)
    for epoch in bar:
        t0 = time.perf_counter()
        order = np.random.default_rng([seed, epoch]).permutation(len(train))
        train_parts = _epoch_average(model, train, weights, batch_size, _Step(), order, before_step)
        average.swap()  # validate (and keep) the averaged weights
        val_parts = _epoch_average(model, monitor, weights, batch_size)
        val_loss = val_parts["loss"]
        if cosine:  # per epoch after the warm-up, from learning_rate down to min_lr at max_epochs
            done = min(1.0, max(0.0, (epoch + 1 - warmup_epochs) / max(1, max_epochs - warmup_epochs)))
            if epoch + 1 >= warmup_epochs:
                for group in optimizer.param_groups:
                    group["lr"] = min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * done))
        elif epoch + 1 >= warmup_epochs:  # the plateau schedule starts after the warm-up
            scheduler.step(val_loss)
        if val_loss < best_loss:
            best_loss, best_epoch, bad_epochs = val_loss, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
        average.swap()
        lr = optimizer.param_groups[0]["lr"]
        row = {"epoch": epoch, "lr": lr, "seconds": time.perf_counter() - t0}
        row.update({f"train_{k}": v for k, v in train_parts.items()})
        row.update({f"val_{k}": v for k, v in val_parts.items()})
        history.append(row)
        bar.set_postfix(train=f"{train_parts['loss']:.3g}", val=f"{val_loss:.3g}", lr=f"{lr:.1e}")
        checkpoint = {
            "kind": kind,
            "run_identity": identity,
            "hyperparameters": model.hyperparameters,
            "model": model.state_dict(),
            "best_model": best_state,
            "average": average.average,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "best_loss": best_loss,
            "best_epoch": best_epoch,
            "bad_epochs": bad_epochs,
            "history": history,
        }
        write_bytes(ckpt_path, lambda handle, c=checkpoint: torch.save(c, handle))
        _write_csv(csv_path, history)
        if not np.isfinite(val_loss):
            raise InputFileError(f"training of {out_path} diverged (validation loss {val_loss}) at epoch {epoch}")
        if stop_reached(epoch, bad_epochs, lr):
            log.info("early stop at epoch %d (best epoch %d, validation loss %.4g)", epoch, best_epoch, best_loss)
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    meta = dict(metadata or {})
    meta.update(
        {
            "trained": True,
            "seed": int(seed),
            "best_epoch": int(best_epoch),
            "best_monitor_loss": float(best_loss),
            "epochs_run": len(history),
            "n_train_structures": len(train),
            "n_val_structures": len(val),
            "train_settings": {k: v for k, v in settings.items() if isinstance(v, (int, float, str, bool))},
        }
    )
    save_model(model, out_path, meta)
    return model, history
