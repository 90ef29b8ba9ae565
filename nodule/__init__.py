"""nodule: semi-supervised lung nodule detection in chest CT.

The path of one study: ``io`` -> ``lung`` -> ``candidates`` -> ``patches`` ->
``models``/``training`` -> ``evaluation``. ``data`` holds formats, manifests and
synthetic data; ``cli`` wires the ``nodule`` command.
"""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``nodule.detect(...)``: the Python API of ``nodule detect`` (imported on first use)."""
    if name == "detect":
        from nodule.detection import detect

        return detect
    raise AttributeError(f"module 'nodule' has no attribute {name!r}")
