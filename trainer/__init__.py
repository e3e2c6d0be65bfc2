"""The chapter-6 multilayer perceptron of *Deep Learning from Scratch*, in NumPy.

Knows nothing of Optuna or MLflow: training reports to an `on_epoch_end(epoch, metrics)` hook.
Datasets and splits live in `trainer.data`.

    net = MultiLayerNet(784, [100] * 6, 10, weight_init_std="he", seed=0)
    history = train(net, make_optimizer("sgd", lr=0.01), x_train, t_train, x_val, t_val,
                    epochs=50, batch_size=100, seed=0)
"""

from ._layers import (
    ACTIVATIONS,
    Affine,
    BatchNormalization,
    Dropout,
    Relu,
    Sigmoid,
    SoftmaxWithLoss,
    Tanh,
)
from ._network import DTYPES, WEIGHT_INITS, MultiLayerNet, validate_architecture
from ._optimizers import (
    OPTIMIZERS,
    SGD,
    AdaGrad,
    Adam,
    Momentum,
    Nesterov,
    Optimizer,
    RMSprop,
    make_optimizer,
)
from ._serialization import load_network, save_network
from ._training import EpochHook, EpochMetrics, Training, TrainingDiverged, TrainingHistory, train

__all__ = [
    "ACTIVATIONS",
    "DTYPES",
    "OPTIMIZERS",
    "SGD",
    "WEIGHT_INITS",
    "AdaGrad",
    "Adam",
    "Affine",
    "BatchNormalization",
    "Dropout",
    "EpochHook",
    "EpochMetrics",
    "Momentum",
    "MultiLayerNet",
    "Nesterov",
    "Optimizer",
    "RMSprop",
    "Relu",
    "Sigmoid",
    "SoftmaxWithLoss",
    "Tanh",
    "Training",
    "TrainingDiverged",
    "TrainingHistory",
    "load_network",
    "make_optimizer",
    "save_network",
    "train",
    "validate_architecture",
]
