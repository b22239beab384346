"""Stage 2: DeepLab-family segmentation networks trained on the pseudo masks (``models``,
``training``), and their multi-scale inference (``inference``)."""

from plda.segmentation.models import (ARCHS, SegmentationNet, build_segmentation_net,
                                      load_segmentation_net, save_segmentation_net)

__all__ = ["ARCHS", "SegmentationNet", "build_segmentation_net", "load_segmentation_net",
           "save_segmentation_net"]
