"""nodule: semi-supervised lung nodule detection in chest CT.

The path of one study: ``io`` -> ``lung`` -> ``candidates`` -> ``patches`` ->
``models``/``training`` -> ``evaluation``. ``data`` holds formats, manifests and
synthetic data; ``cli`` wires the ``nodule`` command.
"""

__version__ = "0.1.0"
