"""Batch detection of nodules in CT studies (``nodule detect``): the end of the system's path.

It calls :mod:`nodule.io`, :mod:`nodule.lung`, :mod:`nodule.candidates`,
:mod:`nodule.patches` and a trained model (:mod:`nodule.models.bundle`), and writes each
study's outputs. Modules: ``studies`` (which studies the inputs hold), ``checks`` (input
warnings), ``pipeline`` (one study), ``outputs`` (the batch folder's files), ``batch``
(the batch: workers, shards, resuming).
"""

from nodule.detection.batch import DetectResult, detect
from nodule.detection.outputs import merge_batches
from nodule.detection.pipeline import DetectSettings

__all__ = ["DetectResult", "DetectSettings", "detect", "merge_batches"]
