"""Propagation order, embedding reuse and output layout of BoxPropagationInferer, with a scripted network."""

import torch
from monai.data import MetaTensor

from common.methods.medsam import BoxPropagationInferer, propagation_order


class BoxEchoNetwork:
    """Fake SAM: the 'embedding' is the slice id; decode predicts exactly the prompt box (at 256 x 256), with logit
    5 inside, or ``x0 / 4`` with ``confidence_from_x0`` (boxes further right are more confident)."""

    def __init__(self, confidence_from_x0: bool = False):
        self.encoded = []
        self.prompts = []
        self.confidence_from_x0 = confidence_from_x0

    def encode(self, images):
        self.encoded.append(images.clone())
        return torch.full((1, 1, 1, 1), float(len(self.encoded)))

    def decode(self, embedding, boxes):
        x0, y0, x1, y1 = boxes.reshape(4).tolist()
        self.prompts.append((x0, y0, x1, y1))
        logits = torch.full((1, 1, 256, 256), -5.0)
        logits[..., int(y0) : int(y1) + 1, int(x0) : int(x1) + 1] = x0 / 4 if self.confidence_from_x0 else 5.0
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
    # equal logits where the boxes overlap: the first box keeps its voxels; slices outside every box stay empty
    assert out[0, 0, 25, 25, 6] == 3 and out[0, 0, 35, 35, 6] == 4 and out[0, 0, 15, 15, 3] == 3
    assert out[0, 0, :, :, :2].sum() == 0 and out[0, 0, 15, 15, 8] == 0  # box 1 ends at slice 7


def test_overlapping_boxes_keep_the_highest_logit_or_the_last_box():
    """``overlap="highest"``: each voxel goes to the box with the higher logit there, whatever the box order;
    ``"last"`` (the CVPR24 script): the later box wins. Channels keep every box's own mask."""
    volume = torch.rand(1, 1, 64, 64, 3) * 255
    boxes = torch.tensor([[[20, 20, 0, 40, 40, 2], [10, 10, 0, 30, 30, 2]]])  # box 1 is further right: logit 20 > 10
    highest = BoxPropagationInferer(box_margin=0, mask_value=1)(volume, BoxEchoNetwork(True), boxes, [[1, 2]])
    last = BoxPropagationInferer(box_margin=0, mask_value=1, overlap="last")(
        volume, BoxEchoNetwork(True), boxes, [[1, 2]]
    )
    assert highest[0, 0, 25, 25, 1] == 1 and last[0, 0, 25, 25, 1] == 2  # the overlap
    assert highest[0, 0, 15, 15, 1] == last[0, 0, 15, 15, 1] == 2 and highest[0, 0, 35, 35, 1] == 1
    channels = BoxPropagationInferer(box_margin=0, mask_value=1, output="channels")(
        volume, BoxEchoNetwork(True), boxes, [[1, 2]]
    )
    assert channels[0, 0, 25, 25, 1] == 20.0 and channels[0, 1, 25, 25, 1] == 10.0  # the logits, both masks kept
    assert channels[0, 0, 15, 15, 1] == 0.0 and (channels[0] > 0).sum(dim=0).max() == 2


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


class NoisyLogitNetwork(BoxEchoNetwork):
    """The prompt box with a different, seeded logit field per decoder call (overlaps have no ties)."""

    def __init__(self):
        super().__init__()
        self.generator = torch.Generator().manual_seed(0)

    def decode(self, embedding, boxes):
        logits, iou = super().decode(embedding, boxes)
        return logits * (0.5 + torch.rand(logits.shape, generator=self.generator)), iou


def test_label_map_equals_the_merge_of_the_channels():
    """``output="labels"`` merges box by box; the evaluation report merges the channels with
    ``highest_score_labels``: the same map, so evaluate.json's "label map" rows score what inference writes."""
    from common.metrics.report import highest_score_labels

    volume = torch.rand(1, 1, 48, 48, 6) * 255
    boxes = torch.tensor([[[5, 5, 0, 30, 30, 5], [15, 15, 1, 40, 40, 4], [10, 20, 2, 35, 44, 5]]])
    labels = torch.tensor([[1, 2, 3]])
    kwargs = dict(box_margin=0, mask_value=1)
    label_map = BoxPropagationInferer(**kwargs)(volume, NoisyLogitNetwork(), boxes, labels)
    channels = BoxPropagationInferer(output="channels", **kwargs)(volume, NoisyLogitNetwork(), boxes, labels)
    assert (channels[0] > 0).sum(dim=0).max() == 3  # all three overlap somewhere
    torch.testing.assert_close(label_map[0, 0], highest_score_labels(channels[0]), rtol=0, atol=0)
