"""Self-describing model files: save, load with checks, random initialisation.

A model file is ``torch.save`` of a plain dict (loadable with
``torch.load(weights_only=True)``, so no code is unpickled)::

    format: "bornfield-model", format_version: 1
    kind: "potential" | "born" | "born_row"
    species: [...], cutoff: Å (the ``cutoff`` hyperparameter: the learned part's), receptive_field: Å
    (the neighbour-list reach, longer with a physical baseline)
    units: {"length": "Å", "energy": "eV", "force": "eV/Å", "stress": "eV/Å^3", "charge": "e"}
    hyperparameters: constructor arguments
    metadata: training_data_hash, bornfield/torch/e3nn versions, created_utc, seed, ...
    state_dict: {name: tensor}, state_sha256: checksum of the state dict

Loading checks the format, kind, version, species/cutoff consistency and the
checksum, and raises :class:`bornfield.errors.InputFileError` naming the file.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Any

import e3nn
import torch

from bornfield import __version__, atomic
from bornfield.errors import InputFileError
from bornfield.models.base import BornfieldModel
from bornfield.models.born import EquivariantBornModel, PaperRowBaseline
from bornfield.models.born_edge import EdgeBornModel
from bornfield.models.born_polar import PolarizationBornModel
from bornfield.models.potential import NNPotential
from bornfield.models.potential_edge import EdgePotential
from bornfield.models.potential_message import MessagePotential

FORMAT = "bornfield-model"
FORMAT_VERSION = 1
MODEL_CLASSES: dict[str, type[BornfieldModel]] = {
    NNPotential.kind: NNPotential,
    EquivariantBornModel.kind: EquivariantBornModel,
    PaperRowBaseline.kind: PaperRowBaseline,
}
#: Born-model classes by the ``architecture`` hyperparameter (files without it: "density")
BORN_ARCHITECTURES: dict[str, type[BornfieldModel]] = {
    "density": EquivariantBornModel, "edge": EdgeBornModel, "polar": PolarizationBornModel}
#: potential classes by the ``architecture`` hyperparameter (files without it: "density")
POTENTIAL_ARCHITECTURES: dict[str, type[BornfieldModel]] = {
    "density": NNPotential, "edge": EdgePotential, "message": MessagePotential}
#: the kinds whose class depends on the ``architecture`` hyperparameter
ARCHITECTURES = {EquivariantBornModel.kind: BORN_ARCHITECTURES, NNPotential.kind: POTENTIAL_ARCHITECTURES}


def model_class(kind: str, hyperparameters: dict[str, Any]) -> type[BornfieldModel]:
    """The class that rebuilds a model of ``kind`` from its ``hyperparameters``."""
    if kind in ARCHITECTURES:
        classes = ARCHITECTURES[kind]
        architecture = hyperparameters.get("architecture", "density")
        if architecture not in classes:
            raise ValueError(f"unknown {kind} architecture '{architecture}' (known: {sorted(classes)})")
        return classes[architecture]
    return MODEL_CLASSES[kind]


UNITS = {"length": "Å", "energy": "eV", "force": "eV/Å", "stress": "eV/Å^3", "charge": "e", "field": "V/Å"}


def state_checksum(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and raw bytes of a state dict."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().contiguous().cpu()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def plain_data(value: Any) -> Any:
    """Convert to JSON-like builtins (what ``torch.load(weights_only=True)`` accepts)."""
    return json.loads(json.dumps(value, default=atomic.json_default))


def save_model(model: BornfieldModel, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to ``path`` atomically with its hyperparameters and metadata."""
    meta = dict(model.metadata)
    meta.update(metadata or {})
    meta.setdefault("training_data_hash", None)
    meta.update(
        {
            "bornfield_version": __version__,
            "torch_version": str(torch.__version__),
            "e3nn_version": str(e3nn.__version__),
            "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "dtype": str(model.dtype).removeprefix("torch."),
        }
    )
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": model.kind,
        "species": list(model.species),
        "cutoff": float(model.local_cutoff),
        "receptive_field": float(model.receptive_field),
        "units": dict(UNITS),
        "hyperparameters": plain_data(model.hyperparameters),
        "metadata": plain_data(meta),
        "state_dict": state,
        "state_sha256": state_checksum(state),
    }
    path = Path(path)
    atomic.write_bytes(path, lambda handle: torch.save(payload, handle))
    model.metadata = meta
    return path


def read_model_file(path: str | Path) -> dict[str, Any]:
    """Load and validate the raw payload of a model file (no model is built)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"model file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError/UnpicklingError/EOFError/... on bad files
        raise InputFileError(
            f"{path}: not a readable bornfield model file (truncated or corrupted?): {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputFileError(f"{path}: not a bornfield model file (missing format marker '{FORMAT}')")
    if payload.get("format_version") != FORMAT_VERSION:
        raise InputFileError(
            f"{path}: model file format version {payload.get('format_version')} is not supported "
            f"(this bornfield reads version {FORMAT_VERSION})"
        )
    for key in ("kind", "species", "cutoff", "hyperparameters", "state_dict", "state_sha256", "metadata"):
        if key not in payload:
            raise InputFileError(f"{path}: model file lacks the '{key}' entry")
    if payload["kind"] not in MODEL_CLASSES:
        raise InputFileError(f"{path}: unknown model kind '{payload['kind']}' (known: {sorted(MODEL_CLASSES)})")
    hyper = payload["hyperparameters"]
    if list(hyper.get("species", [])) != list(payload["species"]) or float(hyper.get("cutoff", -1)) != float(
        payload["cutoff"]
    ):
        raise InputFileError(f"{path}: species/cutoff in the header disagree with the hyperparameters")
    if state_checksum(payload["state_dict"]) != payload["state_sha256"]:
        raise InputFileError(f"{path}: parameter checksum mismatch: the model file is corrupted")
    return payload


def load_model(
    path: str | Path,
    kind: str | tuple[str, ...] | None = None,
    dtype: torch.dtype = torch.float32,
    species: list[str] | tuple[str, ...] | None = None,
) -> BornfieldModel:
    """Build the model stored in ``path``.

    Args:
        path: model file.
        kind: expected kind(s); a mismatch raises InputFileError.
        dtype: parameter dtype for evaluation (float32 is the fast default).
        species: if given, every listed species must be known to the model.
    """
    payload = read_model_file(path)
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds is not None and payload["kind"] not in kinds:
        raise InputFileError(f"{path}: holds a '{payload['kind']}' model, expected {' or '.join(kinds)}")
    if species is not None:
        missing = sorted(set(species) - set(payload["species"]))
        if missing:
            raise InputFileError(f"{path}: model does not know species {missing} (knows {payload['species']})")
    cls = MODEL_CLASSES[payload["kind"]]
    try:
        cls = model_class(payload["kind"], payload["hyperparameters"])
        model = cls(**payload["hyperparameters"])
        stored = [v.dtype for v in payload["state_dict"].values() if v.is_floating_point()]
        model.to(stored[0] if stored else dtype)  # load without rounding, then cast
        model.load_state_dict(payload["state_dict"], strict=True)
    except (TypeError, RuntimeError, ValueError, KeyError) as exc:
        raise InputFileError(f"{path}: parameters do not fit a {cls.__name__}: {exc}") from exc
    model.metadata = dict(payload["metadata"])
    model.metadata["path"] = str(path)
    model.to(dtype)
    model.eval()
    return model


def create_model(
    kind: str, species, cutoff: float, seed: int = 0, **hyperparameters
) -> BornfieldModel:
    """A randomly initialised model (reproducible from ``seed``)."""
    if kind not in MODEL_CLASSES:
        raise ValueError(f"unknown model kind '{kind}' (known: {sorted(MODEL_CLASSES)})")
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = model_class(kind, hyperparameters)(species=list(species), cutoff=cutoff, **hyperparameters)
    finally:
        torch.random.set_rng_state(generator_state)
    model.metadata = {"seed": int(seed), "trained": False}
    return model


def create_random_model_file(
    kind: str, species, cutoff: float, path: str | Path, seed: int = 0, **hyperparameters
) -> Path:
    """Write a randomly initialised (untrained, but real and loadable) model file.

    Meant for testing downstream stages before training data exists. The
    metadata says ``trained: False``.
    """
    model = create_model(kind, species, cutoff, seed, **hyperparameters)
    return save_model(model, path, {"trained": False, "training_data_hash": None})


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (used as the training-data hash)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


__all__ = [
    "create_model",
    "create_random_model_file",
    "file_sha256",
    "load_model",
    "model_class",
    "read_model_file",
    "save_model",
]
