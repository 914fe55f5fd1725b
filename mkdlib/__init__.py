"""mkdlib: Multiresolution Knowledge Distillation for Anomaly Detection (Salehi et al., CVPR 2021)."""

__version__ = "0.1.0"
