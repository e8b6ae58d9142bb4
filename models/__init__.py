from models.resnet import Embedder, PretrainedUnavailable, get_model, input_channels

__all__ = ["Embedder", "PretrainedUnavailable", "get_model", "input_channels"]
