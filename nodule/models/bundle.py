"""The model file of inference: one versioned file with everything ``nodule detect`` needs.

A model file (``.pt``) is a plain dictionary written with :func:`torch.save` and read back
with ``torch.load(path, map_location="cpu", weights_only=True)``: nothing in it is a
pickled Python object, only strings, numbers, lists, dictionaries and tensors, so an
untrusted file cannot run code when it is read. Its keys:

=================  ==========================================================================
``format``         ``"nodule-model"``
``format_version`` :data:`FORMAT_VERSION` (a reader refuses newer files)
``network``        ``{"class_path": ..., "init_args": {...}}``: the network and its
                   arguments; only :class:`~nodule.models.multistream.MultiStreamNet`
                   (:data:`ALLOWED_NETWORKS`) is built
``patch``          the :class:`~nodule.patches.PatchConfig` fields the model was trained with
                   (views, pixels, field of view, HU window and output range)
``state_dict``     the network's weights and buffers
``threshold``      the operating threshold on the nodule probability (chosen on
                   validation data when the model was exported,
                   :func:`nodule.training.export.export_model`)
``version``        the model's version string
``config_hash``    a fingerprint of what shaped the model (recipe, data, network, patches)
``metadata``       training data (data set, generator version and seed, split name and
                   version), how the threshold was chosen, the figures of the model card,
                   the creation date and :data:`RESEARCH_USE_ONLY`
=================  ==========================================================================

:func:`load_model` reads such a file, or a Lightning checkpoint written by this project's
``nodule fit`` (its ``hyper_parameters`` hold the network as ``class_path`` and
``init_args``; the patch geometry comes from the run's ``config.yaml``; the threshold is
then :data:`CHECKPOINT_THRESHOLD`, not one chosen on validation data). Whatever goes wrong
(no file, an empty, truncated or random file, a pickle that ``weights_only`` refuses,
another network or weights that do not fit it) is one :class:`ModelLoadError` whose message
is one line naming the file and the problem, raised before any data is read.

The package ships one model, :data:`DEFAULT_MODEL` (``nodule/models/default/model.pt``,
with its card ``MODEL_CARD.md``), made by ``scripts/train_default_model.py``.
"""

from __future__ import annotations

import datetime as _dt
import inspect
import json
import math
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nodule.fingerprint import fingerprint
from nodule.patches import PatchConfig
from nodule.paths import atomic_path

FORMAT = "nodule-model"
"""The ``format`` of a model file."""
FORMAT_VERSION = 1
"""The newest ``format_version`` this reader knows."""
MULTISTREAM = "nodule.models.multistream.MultiStreamNet"
ALLOWED_NETWORKS: tuple[str, ...] = (MULTISTREAM, "nodule.models.MultiStreamNet")
"""Network class paths a model file may name (both spellings of the one network)."""
DEFAULT_MODEL = Path(__file__).resolve().parent / "default" / "model.pt"
"""The model shipped in the package (its card: ``MODEL_CARD.md`` beside it)."""
RESEARCH_USE_ONLY = "Research use only, not for clinical use."
CHECKPOINT_THRESHOLD = 0.5
"""The threshold of a model read from a training checkpoint, which holds none chosen on
validation data (export it with :func:`nodule.training.export.export_model` for one)."""
PATCH_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(PatchConfig))


class ModelLoadError(ValueError):
    """A model file that cannot be used; the message is one line naming the file and why."""


def _one_line(text: str, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _plain(value: Any, what: str) -> Any:
    """``value`` as plain JSON types (what ``weights_only`` loading accepts).

    Raises:
        ValueError: a value JSON cannot hold.
    """
    try:
        return json.loads(json.dumps(value, default=_json_default))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be plain JSON-like data: {err}") from err


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON data")


def patch_dict(patch: PatchConfig) -> dict[str, float | int]:
    """The fields of a patch configuration, as stored in a model file."""
    return {name: getattr(patch, name) for name in PATCH_FIELDS}


def network_arguments() -> set[str]:
    """The arguments :class:`~nodule.models.multistream.MultiStreamNet` takes."""
    from nodule.models.multistream import MultiStreamNet

    return set(inspect.signature(MultiStreamNet.__init__).parameters) - {"self"}


@dataclass
class ModelBundle:
    """A model ready for inference.

    Attributes:
        net: the network, in eval mode (``(B, V, H, W)`` patches -> ``(B, 2)`` logits).
        patch: the patch geometry and HU scaling the network was trained with; patches
            for :meth:`predict` must be made with it.
        threshold: the operating threshold on the nodule probability.
        version: the model's version string.
        config_hash: fingerprint of what shaped the model.
        path: the file it was read from (or written to).
        metadata: training data, threshold choice, figures, dates (see the module doc).
        init_args: the network's arguments (``class_path`` :data:`MULTISTREAM`).
    """

    net: nn.Module
    patch: PatchConfig
    threshold: float
    version: str
    config_hash: str
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)
    init_args: dict[str, Any] = field(default_factory=dict)

    def predict(
        self,
        patches: np.ndarray,
        *,
        batch_size: int = 256,
        device: str | torch.device = "cpu",
    ) -> np.ndarray:
        """Nodule probabilities of candidates' patches.

        Args:
            patches: ``(N, V, H, W)`` float32 patches scaled as :attr:`patch` says
                (:func:`nodule.patches.scale_hu` of :func:`nodule.patches.extract_patches`).
            batch_size: candidates per forward pass.
            device: where the network runs (e.g. ``"cuda"``); the network moves there.

        Returns:
            ``(N,)`` float32 probabilities in [0, 1].

        Raises:
            ValueError: patches of another shape than the model's.
        """
        from nodule.models.multistream import probability

        x = np.asarray(patches)
        want = (self.patch.n_views, self.patch.size_px, self.patch.size_px)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(
                f"model {self.version} takes patches (N, {want[0]}, {want[1]}, {want[2]}) "
                f"({self.patch.fov_mm:g} mm views), got {x.shape}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        dev = torch.device(device)
        self.net.to(dev).eval()
        out = np.empty(len(x), np.float32)
        with torch.inference_mode():
            for start in range(0, len(x), batch_size):
                chunk = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size], np.float32))
                probs = probability(self.net(chunk.to(dev)).float())
                out[start : start + len(chunk)] = probs.cpu().numpy()
        return out

    def save(self, path: Path | None = None) -> Path:
        """Write the bundle to ``path`` (default :attr:`path`) with :func:`save_model`."""
        return save_model(
            net=self.net,
            init_args=self.init_args,
            patch=self.patch,
            threshold=self.threshold,
            version=self.version,
            config_hash=self.config_hash,
            metadata=self.metadata,
            path=self.path if path is None else path,
        )


# --------------------------------------------------------------------------- writing


def build_network(class_path: str, init_args: Mapping[str, Any]) -> nn.Module:
    """The network of a model file, freshly initialised.

    Raises:
        ValueError: a class path other than :data:`ALLOWED_NETWORKS`, unknown arguments or
            arguments the network refuses.
    """
    from nodule.models.multistream import MultiStreamNet

    if class_path not in ALLOWED_NETWORKS:
        raise ValueError(f"network {class_path!r} is not supported (only {MULTISTREAM})")
    unknown = sorted(set(init_args) - network_arguments())
    if unknown:
        raise ValueError(f"{MULTISTREAM} takes no argument(s) {', '.join(unknown)}")
    try:
        return MultiStreamNet(**dict(init_args))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{MULTISTREAM} refuses its arguments: {_one_line(str(err))}") from err


def _check_geometry(init_args: Mapping[str, Any], patch: PatchConfig) -> None:
    views = int(init_args.get("n_views", 9))
    size = int(init_args.get("input_size", 64))
    if (views, size) != (patch.n_views, patch.size_px):
        raise ValueError(
            f"the network takes {views} views of {size} px but the patches have "
            f"{patch.n_views} views of {patch.size_px} px"
        )


def save_model(
    *,
    net: nn.Module | Mapping[str, torch.Tensor],
    init_args: Mapping[str, Any],
    patch: PatchConfig,
    threshold: float,
    version: str,
    config_hash: str,
    metadata: Mapping[str, Any] | None = None,
    path: Path,
    class_path: str = MULTISTREAM,
) -> Path:
    """Write a model file (see the module doc), atomically (a temporary file and a rename).

    The weights are checked against the network first: a file that would not load is never
    written.

    Args:
        net: the network or its state dict.
        init_args: the network's arguments (plain values).
        patch: the patch geometry the network was trained with.
        threshold: the operating threshold, in [0, 1].
        version: the model's version string.
        config_hash: fingerprint of what shaped the model.
        metadata: training data, figures, etc. (plain values); ``created`` and
            ``research_use`` are added when missing.
        path: the file to write.
        class_path: the network's class (only :data:`MULTISTREAM`).

    Returns:
        ``path``.

    Raises:
        ValueError: a threshold outside [0, 1], arguments or metadata that are not plain
            data, a network other than :data:`MULTISTREAM`, weights that do not fit it.
    """
    if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    args = _plain(dict(init_args), "init_args")
    meta = _plain(dict(metadata or {}), "metadata")
    meta.setdefault("created", _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    meta.setdefault("research_use", RESEARCH_USE_ONLY)
    _check_geometry(args, patch)
    state = net.state_dict() if isinstance(net, nn.Module) else dict(net)
    state = {k: v.detach().cpu().clone() for k, v in state.items()}
    probe = build_network(class_path, args)
    _load_weights(probe, state)  # raises ValueError on a mismatch
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "network": {"class_path": class_path, "init_args": args},
        "patch": patch_dict(patch),
        "state_dict": state,
        "threshold": float(threshold),
        "version": str(version),
        "config_hash": str(config_hash),
        "metadata": meta,
    }
    path = Path(path)
    with atomic_path(path) as part:
        torch.save(payload, part)
    return path


# --------------------------------------------------------------------------- reading


def _load_weights(net: nn.Module, state: Mapping[str, Any]) -> None:
    """Load ``state`` into ``net`` strictly.

    Raises:
        ValueError: missing or unexpected keys, or tensors of other shapes (the first few named).
    """
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} (the network's {tuple(v.shape)})"
        for k, v in own.items()
        if k in state and (not isinstance(state[k], torch.Tensor) or state[k].shape != v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if shapes:
        problems.append(f"{len(shapes)} of another shape (e.g. {shapes[0]})")
    if problems:
        raise ValueError("the weights do not fit the network: " + ", ".join(problems) + " tensors")
    net.load_state_dict(dict(state), strict=True)


def _read(path: Path) -> Any:
    """``torch.load(path, weights_only=True)``, every failure a one-line :class:`ModelLoadError`."""
    if not path.exists():
        raise ModelLoadError(f"{path}: no such model file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: a folder, not a model file")
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as err:
        raise ModelLoadError(f"{path}: cannot read the model file ({err.strerror or err})") from err
    if size == 0:
        raise ModelLoadError(f"{path}: empty file, not a model")
    is_zip = head == b"PK\x03\x04"
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error says it
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        marker = "Unsupported global: GLOBAL "
        if marker in text:
            name = text.split(marker, 1)[1].split()[0]
            raise ModelLoadError(
                f"{path}: holds a pickled Python object ({name}) that safe loading "
                "(weights_only) refuses; a model file holds only tensors and plain values"
            ) from None
        what = "corrupt or truncated PyTorch file" if is_zip else "not a PyTorch model file (random or other bytes)"
        raise ModelLoadError(f"{path}: {what}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
        if is_zip:
            raise ModelLoadError(f"{path}: corrupt or truncated PyTorch file ({_one_line(str(err), 80)})") from None
        raise ModelLoadError(f"{path}: not a PyTorch model file (random or other bytes)") from None


def load_model(path: Path | str | None = None) -> ModelBundle:
    """Read a model file, or a Lightning checkpoint of ``nodule fit``.

    Args:
        path: a model file (:func:`save_model`), a ``.ckpt`` of ``nodule fit``; None:
            :data:`DEFAULT_MODEL`.

    Returns:
        The model, its network in eval mode on the CPU.

    Raises:
        ModelLoadError: (one line, naming the file) no such file, an empty, truncated or
            random file, a pickle that ``weights_only`` refuses, a file of another format or
            newer version, another network, weights that do not fit the network, or (for a
            checkpoint) no patch geometry beside it.
    """
    path = Path(DEFAULT_MODEL if path is None else path).expanduser()
    raw = _read(path)
    if not isinstance(raw, Mapping):
        raise ModelLoadError(f"{path}: holds a {type(raw).__name__}, not a nodule model or checkpoint")
    try:
        if raw.get("format") == FORMAT:
            return _from_bundle(path, raw)
        if "state_dict" in raw and "hyper_parameters" in raw:
            return _from_checkpoint(path, raw)
    except ModelLoadError:
        raise
    except (ValueError, TypeError, KeyError, RuntimeError) as err:
        raise ModelLoadError(f"{path}: {_one_line(str(err), 300)}") from None
    if "format" in raw:
        raise ModelLoadError(f"{path}: format {_one_line(repr(raw['format']), 60)}, not a {FORMAT} file")
    keys = ", ".join(sorted(str(k) for k in raw)[:4])
    raise ModelLoadError(
        f"{path}: neither a {FORMAT} file nor a Lightning checkpoint of nodule fit (keys: {keys})"
    )


def _from_bundle(path: Path, raw: Mapping[str, Any]) -> ModelBundle:
    version = raw.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise ModelLoadError(f"{path}: {FORMAT} file without a valid format_version")
    if version > FORMAT_VERSION:
        raise ModelLoadError(
            f"{path}: {FORMAT} format version {version} is newer than this package reads "
            f"({FORMAT_VERSION}); update the nodule package"
        )
    network = raw.get("network")
    if not isinstance(network, Mapping) or not isinstance(network.get("init_args"), Mapping):
        raise ModelLoadError(f"{path}: {FORMAT} file without its network's class_path and init_args")
    class_path = str(network.get("class_path"))
    if class_path not in ALLOWED_NETWORKS:
        raise ModelLoadError(f"{path}: network {class_path!r} is not supported (only {MULTISTREAM})")
    init_args = dict(network["init_args"])
    patch_raw = raw.get("patch")
    if not isinstance(patch_raw, Mapping):
        raise ModelLoadError(f"{path}: {FORMAT} file without its patch configuration")
    unknown = sorted(set(patch_raw) - set(PATCH_FIELDS))
    if unknown:
        raise ModelLoadError(f"{path}: unknown patch field(s) {', '.join(unknown)}")
    patch = PatchConfig(**dict(patch_raw))
    threshold = raw.get("threshold")
    if not isinstance(threshold, int | float) or not 0.0 <= float(threshold) <= 1.0:
        raise ModelLoadError(f"{path}: threshold {threshold!r} is not a probability")
    state = raw.get("state_dict")
    if not isinstance(state, Mapping):
        raise ModelLoadError(f"{path}: {FORMAT} file without a state_dict")
    _check_geometry(init_args, patch)
    net = build_network(class_path, init_args)
    _load_weights(net, state)
    metadata = raw.get("metadata")
    return ModelBundle(
        net=net.eval(),
        patch=patch,
        threshold=float(threshold),
        version=str(raw.get("version", "")),
        config_hash=str(raw.get("config_hash", "")),
        path=path,
        metadata=dict(metadata) if isinstance(metadata, Mapping) else {},
        init_args=init_args,
    )


def checkpoint_patch(path: Path, raw: Mapping[str, Any]) -> tuple[PatchConfig, str]:
    """The patch configuration of a ``nodule fit`` checkpoint and where it was found: the
    checkpoint's data-module hyperparameters, else the run's ``config.yaml`` (the folder
    above ``checkpoints/``, or beside the checkpoint).

    Raises:
        ModelLoadError: found nowhere.
    """
    data_hp = raw.get("datamodule_hyper_parameters")
    if isinstance(data_hp, Mapping):
        patch = data_hp.get("patch")
        if isinstance(patch, Mapping):
            return PatchConfig(**{k: v for k, v in patch.items() if k in PATCH_FIELDS}), "checkpoint"
        if isinstance(patch, PatchConfig):  # pragma: no cover - weights_only never yields one
            return patch, "checkpoint"
    import yaml

    for config in (path.parent.parent / "config.yaml", path.parent / "config.yaml"):
        if not config.is_file():
            continue
        try:
            text = yaml.safe_load(config.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        data = text.get("data") if isinstance(text, Mapping) else None
        args = data.get("init_args", data) if isinstance(data, Mapping) else None
        patch = args.get("patch") if isinstance(args, Mapping) else None
        if isinstance(patch, Mapping):
            return PatchConfig(**{k: v for k, v in patch.items() if k in PATCH_FIELDS}), str(config)
    raise ModelLoadError(
        f"{path}: a training checkpoint without its patch configuration (no config.yaml of "
        "its run beside the checkpoints folder); export it to a model file with "
        "nodule.training.export.export_model"
    )


def _from_checkpoint(path: Path, raw: Mapping[str, Any]) -> ModelBundle:
    hp = raw.get("hyper_parameters")
    net_hp = hp.get("net") if isinstance(hp, Mapping) else None
    if not isinstance(net_hp, Mapping) or "class_path" not in net_hp:
        raise ModelLoadError(
            f"{path}: a checkpoint whose hyperparameters name no network (class_path); "
            "not one of nodule fit"
        )
    class_path = str(net_hp["class_path"])
    if class_path not in ALLOWED_NETWORKS:
        raise ModelLoadError(f"{path}: network {class_path!r} is not supported (only {MULTISTREAM})")
    init_args = dict(net_hp.get("init_args") or {})
    state = raw["state_dict"]
    if not isinstance(state, Mapping):
        raise ModelLoadError(f"{path}: checkpoint state_dict is not a mapping")
    weights = {k[len("net.") :]: v for k, v in state.items() if str(k).startswith("net.")}
    if not weights:
        raise ModelLoadError(f"{path}: checkpoint holds no network weights (net.*)")
    net = build_network(class_path, init_args)
    _load_weights(net, weights)
    patch, source = checkpoint_patch(path, raw)
    _check_geometry(init_args, patch)
    shaped = fingerprint({"network": {"class_path": MULTISTREAM, "init_args": init_args}, "patch": patch_dict(patch)})
    return ModelBundle(
        net=net.eval(),
        patch=patch,
        threshold=CHECKPOINT_THRESHOLD,
        version=f"checkpoint:{path.name}",
        config_hash=shaped,
        path=path,
        metadata={
            "source": "lightning checkpoint",
            "epoch": raw.get("epoch"),
            "global_step": raw.get("global_step"),
            "patch_from": source,
            "threshold_source": (
                f"default {CHECKPOINT_THRESHOLD}: a training checkpoint holds no threshold chosen "
                "on validation data; export it (nodule.training.export.export_model) for one"
            ),
            "research_use": RESEARCH_USE_ONLY,
        },
        init_args=init_args,
    )
