import pytest
import torch

from lwkit import measure, models


def test_lenet_300_100_shape_and_params():
    model = models.build("mlp")
    assert model(torch.zeros(5, 1, 28, 28)).shape == (5, 10)
    # 784*300+300 + 300*100+100 + 100*10+10, by hand
    assert measure.count_params(model) == 266_610


def test_small_cnn_shape_and_blocks():
    model = models.build("cnn")
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64]
    assert all(c.bias is None for c in convs), "conv-bn blocks carry their bias in BatchNorm"
    narrow = models.SmallCNN(channels=(8, 8))
    assert narrow(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="'resnet'"):
        models.build("resnet")
    with pytest.raises(ValueError, match="channels"):
        models.SmallCNN(channels=(16, 0))
