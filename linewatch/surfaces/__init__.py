"""Synthetic surfaces: procedural texture families (a product per style) and defects with masks.

Used by the daemon's synthetic camera, ``trainer synth`` and the trainer's local negatives. numpy + cv2
only (the photograph families ``brick``/``grass``/``gravel`` appear only where scikit-image is installed).
"""

from linewatch.surfaces.defects import DEFECT_KINDS, inject_defect
from linewatch.surfaces.textures import FAMILIES, SurfaceStyle, render_surface, surface_style

__all__ = ["DEFECT_KINDS", "FAMILIES", "SurfaceStyle", "inject_defect", "render_surface", "surface_style"]
