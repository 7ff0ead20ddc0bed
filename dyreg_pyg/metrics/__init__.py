"""Metrics: classification scores and the region-object distance (:mod:`.scores`, re-exported
here), and the analytic accuracy bounds of MultiSyncMNIST (:mod:`.syncmnist_bounds`, imported
from there: it reads the generator's configuration in :mod:`dyreg_pyg.data`)."""

from .scores import DistanceMeter, confusion_matrix, region_object_distance, topk_correct

__all__ = ["topk_correct", "confusion_matrix", "region_object_distance", "DistanceMeter"]
