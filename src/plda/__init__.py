"""plda-wsss: weakly supervised semantic segmentation from image-level tags.

Flagship method: PLDA (Pixel-Level Domain Adaptation, IEEE TIP 2024) on top of SEAM.
"""

__version__ = "0.1.0"
