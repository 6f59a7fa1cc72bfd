"""equinet: shift-equivariant and invertible U-Nets for image reconstruction.

Layers (`equinet.sampling`) and networks (`equinet.models`) need torch alone; data modules,
Lightning modules and the CLI build on top of them.
"""

__version__ = "0.1.0"
