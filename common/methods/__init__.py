"""What each published method adds to the shared pieces, one package per method (as MONAI's ``monai.apps.vista3d``).

A method's whole difference is its network (``common.networks.<method>``: core + adapters + what trains) and its
package here: prompt samplers, data rules, batch preparation, inferer and loss. Everything generic stays in
``common.transforms`` (I/O, intensity, file prompts -> array, label prompt samplers, the SAM input contract),
``common.inferers``, ``common.engines``, ``common.metrics`` and ``common.data``.

* :mod:`common.methods.medsam`: evaluation box protocols, foreground slices, box-prompt batches, box propagation,
  the MedSAM loss.
* :mod:`common.methods.sam3d_adapter`: 3D point prompts, scale-factor resampling, the point-centred patch and the
  automatic sliding-window inferers.
* :mod:`common.methods.msa`: per-slice click maps and the per-structure sliding-window inferer.
"""
