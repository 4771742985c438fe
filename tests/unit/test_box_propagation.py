"""Propagation order, embedding reuse and output layout of BoxPropagationInferer, with a scripted network."""

import torch
from monai.data import MetaTensor

from common.methods.medsam import BoxPropagationInferer, propagation_order


class BoxEchoNetwork:
    """Fake SAM: the 'embedding' is the slice id; decode predicts exactly the prompt box (at 256 x 256)."""

    def __init__(self):
        self.encoded = []
        self.prompts = []

    def encode(self, images):
        self.encoded.append(images.clone())
        return torch.full((1, 1, 1, 1), float(len(self.encoded)))

    def decode(self, embedding, boxes):
        x0, y0, x1, y1 = boxes.reshape(4).tolist()
        self.prompts.append((x0, y0, x1, y1))
        logits = torch.full((1, 1, 256, 256), -5.0)
        logits[..., int(y0) : int(y1) + 1, int(x0) : int(x1) + 1] = 5.0
        return logits, torch.ones(1, 1)


def test_propagation_order_matches_reference():
    assert propagation_order(2, 7) == [4, 5, 6, 7, 3, 2]
    assert propagation_order(3, 3) == [3]


def test_each_slice_is_encoded_once_across_boxes():
    net = BoxEchoNetwork()
    volume = torch.rand(1, 1, 64, 64, 10) * 255
    boxes = torch.tensor([[[10, 10, 2, 30, 30, 7], [20, 20, 5, 40, 40, 9]]])
    inferer = BoxPropagationInferer(box_margin=0, mask_value=1)
    out = inferer(volume, net, boxes, torch.tensor([[3, 4]]))
    assert inferer.last_encoder_calls == 8 == len(net.encoded)  # slices 2..9
    assert len(net.prompts) == 6 + 5
    assert out.shape == (1, 1, 64, 64, 10) and out.dtype == torch.int64
    # later boxes overwrite earlier ones; slices outside every box stay empty
    assert out[0, 0, 35, 35, 6] == 4 and out[0, 0, 15, 15, 3] == 3 and out[0, 0, :, :, :2].sum() == 0
    assert out[0, 0, 15, 15, 8] == 0  # box 1 ends at slice 7


def test_propagated_prompt_comes_from_previous_mask_plus_margin():
    net = BoxEchoNetwork()
    volume = torch.rand(1, 1, 128, 128, 3) * 255
    BoxPropagationInferer(box_margin=3, mask_value=1)(volume, net, torch.tensor([[[20, 30, 0, 40, 50, 2]]]))
    first, second = net.prompts[0], net.prompts[1]
    assert first == (40.0, 60.0, 80.0, 100.0)  # int(v * 256 / 128)
    # The 256-px logits [40..80] x [60..100] become the 128-px mask [20..39] x [30..49] (bilinear, logit > 0),
    # back at 256 scale [40..79] x [60..99]; the next prompt is that box widened by 3 px.
    assert second == (37.0, 57.0, 82.0, 102.0)


def test_channels_output_and_meta():
    net = BoxEchoNetwork()
    volume = MetaTensor(torch.rand(1, 1, 32, 32, 4) * 255, meta={"filename_or_obj": "x.nii.gz"})
    out = BoxPropagationInferer(output="channels", num_channels=3, mask_value=1)(
        volume, net, torch.tensor([[[2, 2, 1, 10, 10, 1], [20, 20, 2, 30, 30, 2]]]), torch.tensor([[1, 3]])
    )
    assert out.shape == (1, 3, 32, 32, 4) and isinstance(out, MetaTensor)
    assert out[0, 0].sum() > 0 and out[0, 1].sum() == 0 and out[0, 2].sum() > 0


def test_2d_input_and_2d_boxes():
    net = BoxEchoNetwork()
    out = BoxPropagationInferer(mask_value=1)(torch.rand(1, 1, 40, 50) * 255, net, torch.tensor([[[5, 6, 20, 30]]]))
    assert out.shape == (1, 1, 40, 50)
    assert out[0, 0, 10, 10] == 1 and out[0, 0, 30, 10] == 0
