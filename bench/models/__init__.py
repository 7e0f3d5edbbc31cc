"""Model level: a baseline CNN and its flattened twin, trained and timed (see bench/MODELS.md).

    networks.py   the two networks, their parameter tables, the composed first layer
    data.py       scikit-learn's 8x8 digits, CIFAR-10 from a local folder
    training.py   training both alike; the digits and CIFAR-10 experiments
    filters.py    the picture of the first layer's filters
    cases.py      the "model" table of the benchmark suites (gated like the layers)
    cli.py        python -m bench.models params | digits | cifar10

The names below are the package's interface (the tests, asv and the suites use them).
"""

from .cases import MODEL_TABLE, ModelCase, model_configs, select_model_cases, setup_model_case
from .cli import main
from .data import CIFAR10_TEST_FILE, CIFAR10_TRAIN_FILES, load_cifar10, load_digits_split
from .networks import (CONFIGS, ConvNet, FlattenedLayer, NetConfig, build_pair, composed_first_layer, get_config,
                       param_summary, param_table)
from .training import cifar10_experiment, digits_experiment, train_model

__all__ = [
    "CIFAR10_TEST_FILE", "CIFAR10_TRAIN_FILES", "CONFIGS", "ConvNet", "FlattenedLayer", "MODEL_TABLE", "ModelCase",
    "NetConfig", "build_pair", "cifar10_experiment", "composed_first_layer", "digits_experiment", "get_config",
    "load_cifar10", "load_digits_split", "main", "model_configs", "param_summary", "param_table",
    "select_model_cases", "setup_model_case", "train_model",
]
