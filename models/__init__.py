from models.resnet import Embedder, get_model, input_channels
from utils.core.errors import PretrainedUnavailable

__all__ = ["Embedder", "PretrainedUnavailable", "get_model", "input_channels"]
