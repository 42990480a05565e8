"""cdflow_lib: CD-Flow (Chen et al., CVPR 2023), the deep colour difference metric for photographs.

Modules: layers (invertible blocks), flow (multi-scale flow), metric (CDFlow), checkpoints.
"""
__version__ = "0.2.0"
