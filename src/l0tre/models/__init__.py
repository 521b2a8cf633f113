"""Model loading: built-in models, torch/TorchScript/ONNX/Keras-HDF5 files, wrapped in a
:class:`~l0tre.classifier.Classifier` that works in pixel space ``[0, 1]``."""

from __future__ import annotations

from .architectures import ARCHITECTURES, ShortcutA, mnist_cnn_tutorial, paper_mnist_cnn, resnet20
from .keras_h5 import keras_to_torch, load_keras
from .loader import KNOWN_ARCHITECTURES, load_model, match_architecture
from .matlab import load_series_network
from .registry import BUILTIN, ModelInfo, list_models
from .training import TrainConfig, TrainResult, save_trained, train
from .zoo import ZOO, ZooArch

__all__ = [
    "ARCHITECTURES",
    "BUILTIN",
    "KNOWN_ARCHITECTURES",
    "ModelInfo",
    "ShortcutA",
    "TrainConfig",
    "TrainResult",
    "ZOO",
    "ZooArch",
    "keras_to_torch",
    "list_models",
    "load_keras",
    "load_model",
    "load_series_network",
    "match_architecture",
    "mnist_cnn_tutorial",
    "paper_mnist_cnn",
    "resnet20",
    "save_trained",
    "train",
]
