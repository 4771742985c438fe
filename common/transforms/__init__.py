"""Transforms shared by the bundles: intensity presets, prompt sampling, SAM-style resizing.

Prompt coordinate convention (used everywhere outside the networks)
-------------------------------------------------------------------
Prompts are inclusive voxel indices along the spatial axes of the MONAI channel-first array
(``image[c, i, j, k]``), which for a file loaded by MONAI's ITK/NiBabel readers are the array axes of
the image as stored on disk:

* 2D box ``[x0, y0, x1, y1]``; 3D box ``[x0, y0, z0, x1, y1, z1]`` with ``x`` along axis 0 (i),
  ``y`` along axis 1 (j), ``z`` along axis 2 (k); corners inclusive, ``x0 <= x1`` etc.
* point ``[x, y]`` or ``[x, y, z]`` with the same axes.

A 2D slice handed to a SAM network is ``image[c, :, :, k].T`` (``sam_input.to_sam_layout``): rows run along
``y`` (axis 1), columns along ``x`` (axis 0), so SAM's ``(x, y)`` order equals ours and no swap is needed inside
the networks. Boxes and points are converted only at the boundaries: user input (file voxel
indices, mapped through orientation changes by ``geometry.FileBoxesToArrayd``) and the network input
(``sam_input``: the one SAM input contract of axis order, pixel values, size and prompt scaling).
"""
